"""Integration fixtures: a private vhost + key prefix on the real servers, real worker and api processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.procs import Env, Proc, create_env, destroy_env, start_api, start_worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    e = create_env()
    yield e
    destroy_env(e)


@pytest.fixture(scope="module")
def api(env, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    proc, base = start_api(env, tmp_path_factory.mktemp("api"))
    yield base
    proc.stop()


@pytest.fixture
def start_workers(env, tmp_path) -> Iterator:  # type: ignore[no-untyped-def]
    """Start `dramatiq actors` processes on demand; all are stopped after the test."""
    procs: list[Proc] = []

    def start(**kw: object) -> Proc:
        p = start_worker(env, tmp_path, **kw)  # type: ignore[arg-type]
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()
