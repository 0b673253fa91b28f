"""The scheduler process: APScheduler for recurring house-keeping, plus the promoter loop.

Jobs are defined in code and kept in APScheduler's MemoryJobStore (its RedisJobStore pickles job state, so
anyone able to write to Redis could run code). Running two schedulers is safe: the promoter claims entries
atomically and each recurring job takes a Redis lock for its run.
"""

from __future__ import annotations

import logging
import threading

from apscheduler.schedulers.background import BackgroundScheduler

from service.maintenance import purge_expired
from service.promoter import promoter_loop
from service.runtime import Runtime

__all__ = ["start_scheduler"]

logger = logging.getLogger(__name__)

#: Seconds between two purges of expired jobs from the indexes.
PURGE_INTERVAL_S = 300


def _locked(rt: Runtime, name: str, ttl_ms: int, fn):  # type: ignore[no-untyped-def]
    def run() -> None:
        with rt.store.lock(name, ttl_ms) as held:
            if held:
                fn()

    run.__name__ = name
    return run


def start_scheduler(rt: Runtime, stop: threading.Event, *, promoter: bool = True) -> BackgroundScheduler:
    """Start the recurring jobs (and, unless a worker in this process already runs one, a promoter)."""
    sched = BackgroundScheduler(daemon=True)
    sched.add_job(_locked(rt, "purge-expired", PURGE_INTERVAL_S * 1000, lambda: purge_expired(rt.store)),
                  "interval", seconds=PURGE_INTERVAL_S, id="purge-expired", name="purge-expired", max_instances=1,
                  coalesce=True)
    sched.start()
    if promoter:
        threading.Thread(target=promoter_loop, args=(rt.store, rt.broker, rt.settings.promote_interval_s, stop),
                         daemon=True, name="conveyor-promoter").start()
    return sched
