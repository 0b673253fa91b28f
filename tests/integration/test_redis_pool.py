"""The process's Redis client survives more concurrent callers than redis-py's default pool allows."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.config import Settings
from service.runtime import store_client

pytestmark = pytest.mark.integration


def hold_connections(client, n: int) -> list[object]:
    key = f"conveyor-test-pool-{uuid.uuid4().hex[:6]}"

    def hold(_: int) -> object:
        try:
            return client.blpop(key, timeout=1)  # keeps its connection busy for a second
        except Exception as exc:  # noqa: BLE001 - the test reports what went wrong
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(hold, range(n)))


def test_150_concurrent_redis_calls_all_succeed_on_the_store_client():
    settings = Settings(redis_url="redis://127.0.0.1:6379/0", io_timeout_s=10)
    client = store_client(settings)
    outcomes = hold_connections(client, 150)
    assert [o for o in outcomes if isinstance(o, Exception)] == []
