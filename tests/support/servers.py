"""Private RabbitMQ and Redis instances for fault tests: own ports, own data directories, never the shared
servers, so stopping or killing them disturbs nothing else."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import redis

from tests.support.procs import free_port, wait_for


class PrivateRedis:
    """redis-server with AOF fsync on every write, on a free port."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=open(self.dir / "redis.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        client = redis.Redis(port=self.port)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(up, timeout=15, what="private redis")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class PrivateRabbit:
    """A RabbitMQ node of its own (name, ports, data and plugin list), detached, on a free AMQP port."""

    def __init__(self) -> None:
        # The server scripts drop to the rabbitmq user, which cannot enter pytest's private tmp dirs.
        tmp = Path(tempfile.mkdtemp(prefix="conveyor-rabbit-"))
        self.dir = tmp
        self.name = f"conveyor-fault-{uuid.uuid4().hex[:6]}@localhost"
        self.port = free_port()
        (tmp / "enabled_plugins").write_text("[].\n")
        (tmp / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(tmp / "mnesia"),
            "RABBITMQ_LOG_BASE": str(tmp / "log"),
            "RABBITMQ_PID_FILE": str(tmp / "rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(tmp / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(tmp / "rabbitmq"),
        }
        if os.geteuid() == 0:
            try:
                for path in (tmp, tmp / "enabled_plugins", tmp / "rabbitmq.conf"):
                    shutil.chown(path, "rabbitmq", "rabbitmq")
            except (LookupError, PermissionError):
                pass

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self) -> None:
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env, check=True, capture_output=True)
        subprocess.run(["rabbitmqctl", "-n", self.name, "wait", "--timeout", "90", str(self.dir / "rabbit.pid")],
                       env=self.env, check=True, capture_output=True, timeout=120)
        subprocess.run(["rabbitmqctl", "-n", self.name, "await_startup", "--timeout", "90"],
                       env=self.env, check=True, capture_output=True, timeout=120)

    def pid(self) -> int:
        return int((self.dir / "rabbit.pid").read_text().strip())

    def kill(self) -> None:
        """SIGKILL the node's VM: no clean shutdown, only what was fsynced survives."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=15, what="rabbit to die")
        time.sleep(0.5)

    def stop(self) -> None:
        subprocess.run(["rabbitmqctl", "-n", self.name, "stop"], env=self.env, capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)
