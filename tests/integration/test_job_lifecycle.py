"""Jobs through real RabbitMQ and Redis with real `dramatiq actors` workers and a real `conveyor api`."""

from __future__ import annotations

import requests

from tests.support.procs import wait_state


def submit(base: str, body: dict) -> dict:
    r = requests.post(f"{base}/api/jobs", json=body, timeout=10)
    assert r.status_code == 202, r.text
    return r.json()


def test_a_submitted_echo_job_succeeds_and_its_result_can_be_read(api, start_workers):
    start_workers()
    job = submit(api, {"type": "echo", "payload": {"hello": "world", "n": 3}})
    assert job["state"] == "queued"
    done = wait_state(api, job["id"], "succeeded")
    assert done["attempts"] == 1
    r = requests.get(f"{api}/api/jobs/{job['id']}/result", timeout=5)
    assert r.status_code == 200
    assert r.json()["result"] == {"hello": "world", "n": 3}
