"""ops/bench_redis.py runs against the real Redis, reports a cost for every Lua step and leaves no keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis

from tests.support.procs import ROOT

pytestmark = pytest.mark.integration


def test_the_redis_benchmark_reports_each_lua_step_and_cleans_up_after_itself(tmp_path):
    out = tmp_path / "redis.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run([sys.executable, "-m", "ops.bench_redis", "--jobs", "50", "--out", str(out)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    steps = result["redis_usec_per_call"]
    assert set(steps) == {"create", "queued -> running", "running -> succeeded (+ result)"}
    assert all(v > 0 for v in steps.values())
    assert result["redis_usec_per_job"] > 0 and result["jobs_per_s_one_redis_can_carry"] > 0
    assert not list(redis.Redis.from_url("redis://127.0.0.1:6379/0").scan_iter(match="bench-redis-*"))
