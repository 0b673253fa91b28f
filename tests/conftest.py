"""Shared fixtures. Unit tests run on the embedded runtime (StubBroker + fakeredis) in this process;
integration and e2e tests start real processes against real RabbitMQ and Redis (tests/support/procs.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# The in-process runtime is always the embedded one; real servers are only used by subprocesses.
for _var in ("CONVEYOR_BROKER_URL", "CONVEYOR_REDIS_URL"):
    os.environ.pop(_var, None)
os.environ.setdefault("CONVEYOR_PROMOTE_INTERVAL_S", "0.05")


@pytest.fixture(scope="session")
def rt():  # type: ignore[no-untyped-def]
    """The embedded runtime with the job modules loaded."""
    from service.config import Settings
    from service.runtime import configure

    runtime = configure(Settings.from_env(promote_interval_s=0.05))
    runtime.load_job_modules()
    return runtime


@pytest.fixture
def clean(rt):  # type: ignore[no-untyped-def]
    """A flushed embedded store and broker before and after the test."""
    rt.redis.flushall()
    rt.broker.flush_all()
    yield rt
    rt.broker.flush_all()
    rt.redis.flushall()


@pytest.fixture
def worker(clean) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """An in-process Dramatiq worker on the StubBroker (with the tracking middleware's promoter)."""
    from dramatiq import Worker

    w = Worker(clean.broker, worker_timeout=50, worker_threads=2)
    w.start()
    yield w
    w.stop()


@pytest.fixture
def client(clean):  # type: ignore[no-untyped-def]
    from web import create_app

    app = create_app(runtime=clean)
    app.testing = True
    return app.test_client()
