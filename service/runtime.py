"""The process's Conveyor: settings, Redis, store, broker, registry and job service, built once.

``configure()`` is called by whoever starts first in a process - ``actors`` (imported by ``dramatiq
actors``), ``create_app`` or ``conveyor dev`` - and later calls get the same runtime. Only the connection
factories differ between embedded (StubBroker + fakeredis) and real servers.
"""

from __future__ import annotations

import functools
import gc
import importlib
import logging
import threading
from dataclasses import dataclass, field

import dramatiq
import redis
from dramatiq.results.backends import RedisBackend

from service.broker import build_broker
from service.config import Settings
from service.jobs import JobService
from service.promoter import promoter_loop
from service.registry import Registry, registry
from service.store import JobStore
from service.tracking import JobTracking

__all__ = ["Runtime", "configure", "get_runtime", "redis_client", "store_client"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_runtime: Runtime | None = None
_fake_server = None


def redis_client(settings: Settings, *, blocking: bool = False, pool_size: int | None = None) -> redis.Redis:
    """A Redis client: fakeredis on one process-wide FakeServer when embedded. ``blocking`` clients have
    no socket timeout, for XREAD BLOCK and pub/sub readers. With ``pool_size``, a caller waits (up to the
    I/O timeout) for one of that many connections instead of failing when all are in use."""
    global _fake_server
    if settings.embedded_store:
        import fakeredis

        if _fake_server is None:
            _fake_server = fakeredis.FakeServer()
        return fakeredis.FakeRedis(server=_fake_server)
    timeout = None if blocking else settings.io_timeout_s
    if pool_size is not None:
        pool = redis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=pool_size, timeout=settings.io_timeout_s, socket_timeout=timeout,
            socket_connect_timeout=settings.io_timeout_s, health_check_interval=30)
        return redis.Redis(connection_pool=pool)
    return redis.Redis.from_url(settings.redis_url, socket_timeout=timeout,
                                socket_connect_timeout=settings.io_timeout_s, health_check_interval=30)


def store_client(settings: Settings) -> redis.Redis:
    """The process's shared Redis client: a waiting pool, since redis-py's default pool raises
    MaxConnectionsError past 100 connections, which a busy api (or a worker with many threads) would hit."""
    return redis_client(settings, pool_size=settings.redis_max_connections)


@dataclass
class Runtime:
    """Everything a Conveyor process shares."""

    settings: Settings
    redis: redis.Redis
    store: JobStore
    broker: dramatiq.Broker
    registry: Registry
    jobs: JobService
    result_backend: RedisBackend
    tracking: JobTracking
    _loaded: set[str] = field(default_factory=set)

    def load_job_modules(self) -> None:
        """Import the configured job modules, which register their job types."""
        for name in self.settings.job_modules:
            if name not in self._loaded:
                importlib.import_module(name)
                self._loaded.add(name)


def configure(settings: Settings | None = None) -> Runtime:
    """Build the process's runtime (once); later calls return it."""
    global _runtime
    with _lock:
        if _runtime is not None:
            return _runtime
        settings = settings or Settings.from_env()
        client = store_client(settings)
        store = JobStore(client, settings)
        backend = RedisBackend(client=client, namespace=f"{settings.key_prefix}-results")
        tracking = JobTracking(store, registry, backend, result_ttl_ms=settings.result_ttl_s * 1000,
                               max_crash_redeliveries=settings.max_crash_redeliveries)
        broker = build_broker(settings, tracking, backend)
        # Every worker process also promotes due jobs, so retries fire even without `conveyor scheduler`.
        tracking.background.append(functools.partial(promoter_loop, store, broker, settings.promote_interval_s))
        jobs = JobService(store, broker, registry, backend)
        _runtime = Runtime(settings, client, store, broker, registry, jobs, backend, tracking)
        logger.info("conveyor configured: broker=%s store=%s", "embedded" if settings.embedded_broker else "rabbitmq",
                    "embedded" if settings.embedded_store else "redis")
        return _runtime


def get_runtime() -> Runtime:
    """The configured runtime (configuring from the environment if nobody did yet)."""
    return _runtime or configure()


_frozen = False


def freeze_startup_heap() -> None:
    """Move everything built at start-up (modules, app, runtime) out of the cyclic GC's reach, once per
    process: the api after building its app, a worker when it boots (JobTracking.before_worker_boot).

    A full collection walks every tracked object; with Flask, Dramatiq, OpenAI and Supabase loaded that
    is a few hundred thousand objects and paused an api process for 50-180 ms under load (seen as the
    p99 of live-status delivery). Frozen objects are never scanned; what is created later still is.
    """
    global _frozen
    with _lock:
        if _frozen:
            return
        _frozen = True
    gc.collect()
    gc.freeze()
