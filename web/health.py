"""GET /health: broker, Redis and workers seen recently. 200 when all are up, else 503 naming what is down."""

from __future__ import annotations

import time

from flask import Blueprint, current_app

from service import broker as broker_mod
from service.errors import BackendUnavailable

bp = Blueprint("health", __name__)
_started = time.monotonic()


@bp.get("/health")
def health():  # type: ignore[no-untyped-def]
    rt = current_app.extensions["conveyor"]
    checks: dict[str, object] = {}
    try:
        checks["redis"] = rt.store.ping()
    except BackendUnavailable:
        checks["redis"] = False
    checks["broker"] = broker_mod.ping(rt.broker)
    try:
        workers = rt.store.live_workers() if checks["redis"] else []
    except BackendUnavailable:
        workers = []
    checks["workers"] = len(workers) > 0
    down = [name for name, ok in checks.items() if not ok]
    body = {
        "status": "ok" if not down else "degraded",
        "down": down,
        "uptime_s": round(time.monotonic() - _started, 1),
        "services": {"redis": checks["redis"], "broker": checks["broker"], "workers": len(workers)},
    }
    return body, (200 if not down else 503)
