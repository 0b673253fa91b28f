"""Real processes for integration and e2e tests: a private vhost and key prefix per test session (so that
several test runs can share the machine's RabbitMQ and Redis), `dramatiq actors` workers and `conveyor api`
servers as subprocesses, and helpers to wait on job states."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from ops.rabbit import ManagementAPI

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Env:
    """A private corner of the shared servers: its own vhost and key prefix."""

    vhost: str
    prefix: str
    redis_url: str = "redis://127.0.0.1:6379/0"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def broker_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"

    def environ(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update({
            "CONVEYOR_BROKER_URL": self.broker_url,
            "CONVEYOR_REDIS_URL": self.redis_url,
            "CONVEYOR_KEY_PREFIX": self.prefix,
            "CONVEYOR_PROMOTE_INTERVAL_S": "0.05",
            "CONVEYOR_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),  # so that test-only job modules (tests.support...) can be loaded
        })
        env.update(self.extra)
        env.update(overrides)
        return env

    def store(self):  # type: ignore[no-untyped-def]
        from service.config import Settings
        from service.store import JobStore

        settings = Settings(redis_url=self.redis_url, key_prefix=self.prefix)
        return JobStore(redis.Redis.from_url(self.redis_url), settings)

    def queue(self, name: str) -> dict[str, Any]:
        return ManagementAPI().queue(self.vhost, name)

    def peek(self, name: str, count: int = 100) -> list[dict[str, Any]]:
        return ManagementAPI().peek(self.vhost, name, count)

    def queue_messages(self, name: str) -> int:
        """Messages in a queue, counted by a passive declare (exact, unlike the management API's sampling)."""
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(self.broker_url))
        try:
            return int(conn.channel().queue_declare(name, passive=True).method.message_count)
        finally:
            conn.close()


def create_env() -> Env:
    name = ManagementAPI().create_vhost(f"conveyor-test-{uuid.uuid4().hex[:8]}")
    return Env(vhost=name, prefix=name)


def destroy_env(env: Env) -> None:
    ManagementAPI().delete_vhost(env.vhost)
    client = redis.Redis.from_url(env.redis_url)
    for pattern in (f"{env.prefix}:*", f"{env.prefix}-results*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])


class Proc:
    """A subprocess with its output captured to a file, stopped gracefully then killed."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115
        self.popen = subprocess.Popen(args, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(10)


def start_worker(env: Env, tmp: Path, *, threads: int = 4, processes: int = 1, wait: bool = True,
                 modules: tuple[str, ...] = (), **overrides: str) -> Proc:
    """`dramatiq actors` as the README says, waiting until it heartbeats."""
    before = set(env.store().live_workers()) if wait else set()
    log = tmp / f"worker-{uuid.uuid4().hex[:6]}.log"
    proc = Proc([str(BIN / "dramatiq"), "actors", *modules, "--processes", str(processes), "--threads", str(threads)],
                env.environ(**overrides), log)
    if wait:
        wait_for(lambda: len(set(env.store().live_workers()) - before) >= processes or proc.popen.poll() is not None,
                 timeout=30, what="worker heartbeat")
        assert proc.popen.poll() is None, proc.output()
    return proc


def start_api(env: Env, tmp: Path, *, workers: int = 1, threads: int = 16, **overrides: str) -> tuple[Proc, str]:
    """`conveyor api` (gunicorn gthread) on a free port; returns the process and its base URL."""
    port = free_port()
    log = tmp / f"api-{port}.log"
    proc = Proc([str(BIN / "conveyor"), "api", "--port", str(port), "--workers", str(workers),
                 "--threads", str(threads)], env.environ(**overrides), log)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"api exited:\n{proc.output()}")
        try:
            return requests.get(base + "/health", timeout=2).status_code in (200, 503)
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=30, what="api to answer /health")
    return proc, base


def wait_state(base: str, job_id: str, states: set[str] | str, timeout: float = 30.0) -> dict[str, Any]:
    wanted = {states} if isinstance(states, str) else states

    def check() -> dict[str, Any] | None:
        job = requests.get(f"{base}/api/jobs/{job_id}", timeout=5).json()
        return job if job.get("state") in wanted else None

    return wait_for(check, timeout=timeout, what=f"job {job_id} to be {sorted(wanted)}")  # type: ignore[no-any-return]
