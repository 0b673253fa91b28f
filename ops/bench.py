"""Benchmark: Conveyor side by side with plain Dramatiq on the same RabbitMQ and Redis, in one run.

    python -m ops.bench [--jobs 2000] [--threads 8] [--rounds 3] [--out ops/results/bench]

Measures, for each system: publish rate (one thread and --threads threads), drain rate of a backlog by one
worker process with --threads threads, submit -> finished latency at a steady low rate with a warm worker,
and the resident memory of the worker (and of Conveyor's API). Writes <out>.json and <out>.md.
Each round measures plain Dramatiq, then Conveyor; the table gives the median of the rounds per measure
(a shared host's noise moves single runs by 2x), the JSON keeps every round.
Needs the services of ops/services.sh; uses a private vhost and key prefix, removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
import requests

from ops.rabbit import ManagementAPI

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REDIS_URL = "redis://127.0.0.1:6379/0"


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MiB."""
    total = 0
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    pids = [pid] + [int(p) for p in children]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return round(total / 1024, 1)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def wait_until(pred: Callable[[], bool], timeout: float, poll: float = 0.02) -> float:
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("benchmark step timed out")
        time.sleep(poll)
    return time.perf_counter() - t0


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


def timed_parallel(fn: Callable[[int], Any], n: int, threads: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, range(n)))
    return time.perf_counter() - t0


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def bench_plain(vhost: str, n: int, threads: int, tmp: Path) -> dict[str, Any]:
    key = f"bench-plain-{uuid.uuid4().hex[:6]}"
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    os.environ.update({"BENCH_BROKER_URL": url, "BENCH_REDIS_URL": REDIS_URL, "BENCH_KEY": key})
    from ops import bench_plain

    r = redis.Redis.from_url(REDIS_URL)
    out: dict[str, Any] = {}
    t = timed_parallel(lambda i: bench_plain.noop.send({"i": i}, time.time()), n, 1)
    out["publish_1_thread_per_s"] = rate(n, t)
    t = timed_parallel(lambda i: bench_plain.noop.send({"i": i}, time.time()), n, threads)
    out["publish_n_threads_per_s"] = rate(n, t)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    worker = start([str(BIN / "dramatiq"), "ops.bench_plain", "-p", "1", "-t", str(threads)], env, tmp / "plain.log")
    try:
        wait_until(lambda: r.llen(key) >= 1, 60)
        first = time.perf_counter()
        wait_until(lambda: r.llen(key) >= 2 * n, 300)
        out["drain_per_s"] = rate(2 * n - 1, time.perf_counter() - first)
        out["worker_boot_s"] = round(first - t0, 2)
        r.delete(key)
        lat = []
        for i in range(200):
            bench_plain.noop.send({"i": i}, time.time())
            wait_until(lambda i=i: r.llen(key) >= i + 1, 30, poll=0.0005)
            time.sleep(0.005)
        lat = [float(x) * 1000 for x in r.lrange(key, 0, -1)]
        out["latency_ms_p50"] = round(pct(lat, 0.5), 2)
        out["latency_ms_p99"] = round(pct(lat, 0.99), 2)
        out["worker_rss_mb"] = rss_mb(worker.pid)
    finally:
        stop(worker)
        r.delete(key)
    return out


def bench_conveyor(vhost: str, prefix: str, n: int, threads: int, tmp: Path) -> dict[str, Any]:
    """One round; every round of a run uses the same vhost and key prefix (the runtime is built once)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update({"CONVEYOR_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}", "CONVEYOR_REDIS_URL": REDIS_URL,
                "CONVEYOR_KEY_PREFIX": prefix, "PYTHONUNBUFFERED": "1", "CONVEYOR_LOG_LEVEL": "WARNING"})
    os.environ.update({k: v for k, v in env.items() if k.startswith("CONVEYOR_")})
    from service.config import Settings
    from service.jobs import Submission
    from service.runtime import configure

    rt = configure(Settings.from_env())
    rt.load_job_modules()
    out: dict[str, Any] = {}
    t = timed_parallel(lambda i: rt.jobs.submit(Submission("echo", {"i": i})), n, 1)
    out["publish_1_thread_per_s"] = rate(n, t)
    t = timed_parallel(lambda i: rt.jobs.submit(Submission("echo", {"i": i})), n, threads)
    out["publish_n_threads_per_s"] = rate(n, t)
    port = 18000 + os.getpid() % 1000
    api = start([str(BIN / "conveyor"), "api", "--port", str(port), "--workers", "2", "--threads", "16"], env,
                tmp / "api.log")
    base = f"http://127.0.0.1:{port}"
    session_local = threading.local()

    def http_submit(i: int) -> None:
        s = getattr(session_local, "s", None) or requests.Session()
        session_local.s = s
        resp = s.post(f"{base}/api/jobs", json={"type": "echo", "payload": {"i": i}}, timeout=30)
        assert resp.status_code == 202, resp.text

    def succeeded() -> int:
        return int(rt.store.counts().get("default", {}).get("succeeded", 0))

    try:
        wait_until(lambda: _up(base), 30, poll=0.2)
        m = n // 2
        t = timed_parallel(http_submit, m, threads)
        out["http_submit_per_s"] = rate(m, t)
        total = 2 * n + m
        t0 = time.perf_counter()
        worker = start([str(BIN / "dramatiq"), "actors", "-p", "1", "-t", str(threads)], env, tmp / "conveyor.log")
        try:
            wait_until(lambda: succeeded() >= 1, 60)
            first = time.perf_counter()
            wait_until(lambda: succeeded() >= total, 300)
            out["drain_per_s"] = rate(total - 1, time.perf_counter() - first)
            out["worker_boot_s"] = round(first - t0, 2)
            ids = []
            for _ in range(200):
                job, _ = rt.jobs.submit(Submission("echo", {}))
                ids.append(job.id)
                wait_until(lambda job=job: rt.store.get(job.id).state.value == "succeeded", 30, poll=0.0005)
                time.sleep(0.005)
            lat = []
            for job_id in ids:
                j = rt.store.get(job_id)
                lat.append(j.finished_at - j.created_at)
            out["latency_ms_p50"] = round(pct(lat, 0.5), 2)
            out["latency_ms_p99"] = round(pct(lat, 0.99), 2)
            out["worker_rss_mb"] = rss_mb(worker.pid)
            out["api_rss_mb"] = rss_mb(api.pid)
        finally:
            stop(worker)
    finally:
        stop(api)
        keys = list(rt.redis.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            rt.redis.delete(*keys[i:i + 500])
    return out


def _up(base: str) -> bool:
    try:
        return requests.get(base + "/health", timeout=1).status_code in (200, 503)
    except requests.ConnectionError:
        return False


ROWS = [
    ("publish_1_thread_per_s", "publish, 1 thread (jobs/s)"),
    ("publish_n_threads_per_s", "publish, N threads (jobs/s)"),
    ("http_submit_per_s", "HTTP POST /api/jobs, N client threads (jobs/s)"),
    ("drain_per_s", "worker drain of a backlog, 1 process x N threads (jobs/s)"),
    ("latency_ms_p50", "submit -> finished latency p50 (ms)"),
    ("latency_ms_p99", "submit -> finished latency p99 (ms)"),
    ("worker_rss_mb", "worker RSS after the run (MiB)"),
    ("api_rss_mb", "API RSS, 2 gunicorn workers (MiB)"),
]


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per measure, the median over the rounds (numbers only; a measure missing from a round is skipped)."""
    keys = {k for run in runs for k, v in run.items() if isinstance(v, (int, float))}
    return {k: round(statistics.median(run[k] for run in runs if k in run), 2) for k in sorted(keys)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows the median per measure")
    parser.add_argument("--out", default="ops/results/bench")
    args = parser.parse_args(argv)
    mgmt = ManagementAPI()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"conveyor-bench-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    rounds: list[dict[str, dict[str, Any]]] = []
    vhost = mgmt.create_vhost()
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        for i in range(args.rounds):
            (tmp / f"r{i}").mkdir()
            plain = bench_plain(vhost, args.jobs, args.threads, tmp / f"r{i}")
            conveyor = bench_conveyor(vhost, prefix, args.jobs, args.threads, tmp / f"r{i}")
            rounds.append({"plain_dramatiq": plain, "conveyor": conveyor})
            print(f"round {i + 1}/{args.rounds}: {json.dumps(rounds[-1])}", flush=True)
    finally:
        mgmt.delete_vhost(vhost)
    plain, conveyor = (median_of([r[name] for r in rounds]) for name in ("plain_dramatiq", "conveyor"))
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "jobs": args.jobs, "threads": args.threads, "rounds": rounds,
        "median": {"plain_dramatiq": plain, "conveyor": conveyor},
    }
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"Benchmark {result['when']}, {os.cpu_count()} CPUs, {args.jobs} jobs, N = {args.threads} threads, "
             f"median of {args.rounds} rounds (python -m ops.bench)", "",
             "| measure | plain Dramatiq | Conveyor |", "|---|---:|---:|"]
    for key, label in ROWS:
        lines.append(f"| {label} | {plain.get(key, '-')} | {conveyor.get(key, '-')} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
