"""`conveyor dev` as a newcomer runs it: one process, embedded broker and store, over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.procs import ROOT, free_port, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    log = tmp_path_factory.mktemp("dev") / "dev.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "conveyor"), "dev", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return requests.get(f"{base}/health", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=30, what="conveyor dev to be healthy")
    yield base
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(15)


def wait_job(base: str, job_id: str, state: str) -> dict:
    return wait_for(lambda: (j := requests.get(f"{base}/api/jobs/{job_id}", timeout=5).json())["state"] == state and j,
                    timeout=20, what=f"job {state}")


def test_conveyor_dev_runs_jobs_with_nothing_configured(dev_server):
    r = requests.post(f"{dev_server}/api/jobs", json={"type": "echo", "payload": {"hi": 1}}, timeout=5)
    assert r.status_code == 202
    wait_job(dev_server, r.json()["id"], "succeeded")
    assert requests.get(f"{dev_server}/api/jobs/{r.json()['id']}/result", timeout=5).json()["result"] == {"hi": 1}


def test_conveyor_dev_retries_delays_and_cancels(dev_server):
    flaky = requests.post(f"{dev_server}/api/jobs", json={"type": "flaky", "payload": {"fail_times": 1}}, timeout=5)
    delayed = requests.post(f"{dev_server}/api/jobs", json={"type": "echo", "delay_ms": 300}, timeout=5)
    long = requests.post(f"{dev_server}/api/jobs", json={"type": "sleep", "payload": {"seconds": 30}}, timeout=5)
    assert wait_job(dev_server, flaky.json()["id"], "succeeded")["attempts"] == 2
    wait_job(dev_server, delayed.json()["id"], "succeeded")
    wait_job(dev_server, long.json()["id"], "running")
    assert requests.delete(f"{dev_server}/api/jobs/{long.json()['id']}", timeout=5).status_code == 202
    wait_job(dev_server, long.json()["id"], "cancelled")
    stats = requests.get(f"{dev_server}/api/jobs/stats/overview", timeout=5).json()
    assert stats["states"]["succeeded"] >= 2 and stats["states"]["cancelled"] >= 1


def test_the_readme_client_example_prints_a_jobs_live_states_until_it_succeeds(dev_server):
    readme = (ROOT / "README.md").read_text()
    example = readme.split("**Client example**", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    example = example.replace('"http://127.0.0.1:8000"', repr(dev_server))
    assert repr(dev_server) in example
    out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert '"subscribed"' in lines[0].replace("'", '"')
    events = [line.split(" ", 3) for line in lines[1:]]
    states = [e[1] for e in events]
    assert states[0] == "queued" and states[-1] == "succeeded" and "running" in states
    assert [e[2] for e in events].count("100") >= 1  # the sleep job's progress reached 100 %
    ids = [tuple(int(p) for p in e[0].split("-")) for e in events]
    assert ids == sorted(set(ids))  # in order, no duplicates
