"""A webhook receiver on 127.0.0.1 that verifies Conveyor's signature the way docs/job-types.md tells
receivers to (independently of actors/notify.py), and answers with scripted statuses or delays."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from tests.support.standin import Handler, StandIn

#: Oldest timestamp accepted, as a receiver should (replay protection).
TOLERANCE_S = 300


def verify(secret: str, headers: dict[str, str], body: bytes, *, now: float | None = None) -> bool:
    """True if the request carries a valid, fresh ``v1`` signature of ``body`` under ``secret``."""
    timestamp = headers.get("x-conveyor-timestamp", "")
    signature = headers.get("x-conveyor-signature", "")
    if not timestamp.isdigit() or not signature.startswith("v1="):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_S:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature[3:])


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver(StandIn):
    """Records every POST; ``statuses`` is a script of answers (then 200); ``delay_s`` delays answers."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.deliveries: list[Delivery] = []
        self.statuses: list[int] = []
        self.delay_s = 0.0
        self.arrived = threading.Condition()
        super().__init__(_ReceiverHandler)

    def wait_for(self, n: int = 1, timeout: float = 10.0) -> list[Delivery]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.deliveries) >= n, timeout):
                raise AssertionError(f"expected {n} deliveries, got {len(self.deliveries)}")
            return list(self.deliveries)


class _ReceiverHandler(Handler):
    server: WebhookReceiver

    def do_POST(self) -> None:  # noqa: N802
        body = self.body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.server.delay_s:
            time.sleep(self.server.delay_s)
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        ok = verify(self.server.secret, headers, body)
        if status == 200 and not ok:
            status = 401
        with self.server.arrived:
            self.server.deliveries.append(Delivery(self.path, headers, body, ok))
            self.server.arrived.notify_all()
        extra = {"Retry-After": "1"} if status in (429, 503) else None
        self.send_json(status, {"ok": status < 300}, extra)
