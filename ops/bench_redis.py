"""Redis-side cost of Conveyor's bookkeeping: server time per Lua call, from ``INFO commandstats``.

    python -m ops.bench_redis [--jobs 3000] [--out ops/results/redis.json]

Creates ``--jobs`` job records on a private key prefix, moves each to ``running`` and then to ``succeeded``
(with a result), exactly as the API and the worker do, and reads how many microseconds Redis spent per
EVALSHA in each phase. One Redis serves every api and worker process, so this bounds the jobs/s a single
Redis can carry (1e6 / the sum). Uses the Redis of ``CONVEYOR_REDIS_URL`` (default the local one) and removes
its keys afterwards. ``INFO commandstats`` counts every client's calls: run it on an otherwise idle Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench_redis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=ROOT / "ops" / "results" / "redis.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("CONVEYOR_REDIS_URL", "redis://127.0.0.1:6379/0")
    os.environ["CONVEYOR_KEY_PREFIX"] = f"bench-redis-{uuid.uuid4().hex[:6]}"

    from service.config import Settings
    from service.job import Job, now_ms
    from service.runtime import store_client
    from service.state import JobState
    from service.store import JobStore

    settings = Settings.from_env()
    store = JobStore(store_client(settings), settings)
    r = store.redis

    def evalsha() -> tuple[int, int]:
        s = r.info("commandstats").get("cmdstat_evalsha", {"usec": 0, "calls": 0})
        return int(s["usec"]), int(s["calls"])

    now = now_ms()
    jobs = [Job(id=str(uuid.uuid4()), type="echo", queue="default", tenant="default", priority=5,
                payload={"i": i}, options={}, state=JobState.QUEUED, max_retries=3, created_at=now, updated_at=now,
                scheduled_for=0, idempotency_key="", trace_id=uuid.uuid4().hex) for i in range(args.jobs)]
    steps: dict[str, Any] = {
        "create": lambda j: store.create(j),
        "queued -> running": lambda j: store.transition(
            j.id, JobState.RUNNING, from_={JobState.QUEUED}, generation=0,
            set_fields={"started_at": now_ms(), "progress": 0, "progress_message": ""}, incr={"attempts": 1},
            max_crash=3),
        "running -> succeeded (+ result)": lambda j: store.transition(
            j.id, JobState.SUCCEEDED, from_={JobState.RUNNING}, generation=0,
            set_fields={"finished_at": now_ms(), "progress": 100},
            result=(f"{settings.key_prefix}-results:{j.id}", json.dumps({"result": {"i": 1}}), 60_000)),
    }
    usec_per_call: dict[str, float] = {}
    try:
        for name, step in steps.items():
            u0, c0 = evalsha()
            for job in jobs:
                step(job)
            u1, c1 = evalsha()
            usec_per_call[name] = round((u1 - u0) / max(c1 - c0, 1), 1)
            print(f"{name}: {usec_per_call[name]} µs of Redis time per call", flush=True)
    finally:
        keys = list(r.scan_iter(match=f"{settings.key_prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i:i + 500])
    per_job = round(sum(usec_per_call.values()), 1)
    result = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "jobs": args.jobs,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "redis_usec_per_call": usec_per_call, "redis_usec_per_job": per_job,
              "jobs_per_s_one_redis_can_carry": int(1e6 / per_job)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
