"""RabbitMQ management API helpers for operators, the benchmark and the tests: vhosts and queue views."""

from __future__ import annotations

import uuid
from typing import Any

import requests

__all__ = ["ManagementAPI"]


class ManagementAPI:
    """A thin client for the management plugin's HTTP API (default http://127.0.0.1:15672/api, guest)."""

    def __init__(self, base: str = "http://127.0.0.1:15672/api", auth: tuple[str, str] = ("guest", "guest")) -> None:
        self.base = base
        self.auth = auth

    def create_vhost(self, name: str | None = None, user: str = "guest") -> str:
        """Create a vhost (a random ``conveyor-...`` name by default) and give ``user`` full rights on it."""
        name = name or f"conveyor-{uuid.uuid4().hex[:8]}"
        r = requests.put(f"{self.base}/vhosts/{name}", auth=self.auth, timeout=10)
        r.raise_for_status()
        r = requests.put(f"{self.base}/permissions/{name}/{user}", auth=self.auth, timeout=10,
                         json={"configure": ".*", "write": ".*", "read": ".*"})
        r.raise_for_status()
        return name

    def delete_vhost(self, name: str) -> None:
        requests.delete(f"{self.base}/vhosts/{name}", auth=self.auth, timeout=10)

    def queue(self, vhost: str, name: str) -> dict[str, Any]:
        r = requests.get(f"{self.base}/queues/{requests.utils.quote(vhost, safe='')}/{name}", auth=self.auth, timeout=5)
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def peek(self, vhost: str, name: str, count: int = 100) -> list[dict[str, Any]]:
        """Messages at the head of a queue, requeued as they were (for reading dead letters)."""
        r = requests.post(f"{self.base}/queues/{requests.utils.quote(vhost, safe='')}/{name}/get", auth=self.auth,
                          json={"count": count, "ackmode": "ack_requeue_true", "encoding": "auto"}, timeout=10)
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]
