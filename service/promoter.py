"""The promoter: publishes jobs from the Redis schedule when they are due (delayed jobs, retry backoffs).

Entries are claimed atomically with a lease (lua/claim.lua), so any number of promoters - one per worker
process and one in ``conveyor scheduler`` - never publish the same entry twice at once; a promoter that dies
mid-publish lets its lease run out and another takes the entry over. A publish that fails puts the entry
back in the schedule.
"""

from __future__ import annotations

import logging
import threading

import dramatiq

from service.broker import publish
from service.errors import BackendUnavailable
from service.job import now_ms
from service.state import JobState
from service.store import JobStore

__all__ = ["promote_due", "promoter_loop"]

logger = logging.getLogger(__name__)

#: Seconds before a failed publish is tried again.
REPUBLISH_DELAY_S = 1.0


def promote_due(store: JobStore, broker: dramatiq.Broker, limit: int = 100) -> int:
    """Publish every due schedule entry once; returns how many were published."""
    published = 0
    for job_id in store.claim_due(limit=limit):
        job = store.get(job_id)
        try:
            if job is None or job.state not in (JobState.SCHEDULED, JobState.QUEUED, JobState.RETRYING):
                continue  # cancelled, expired or already moved on
            if job.state is JobState.SCHEDULED:
                res = store.transition(job_id, JobState.QUEUED, from_={JobState.SCHEDULED}, unschedule=True)
                if not res.ok:
                    continue
            try:
                publish(broker, job)
                published += 1
            except BackendUnavailable:
                logger.warning("could not publish due job %s; will try again", job_id)
                store.redis.zadd(store.keys.schedule, {job_id: now_ms() + int(REPUBLISH_DELAY_S * 1000)})
        finally:
            store.release_claim(job_id)
    return published


def promoter_loop(store: JobStore, broker: dramatiq.Broker, interval_s: float, stop: threading.Event) -> None:
    """Run :func:`promote_due` until ``stop`` is set."""
    while not stop.is_set():
        try:
            if promote_due(store, broker) == 0:
                stop.wait(interval_s)
        except Exception:
            logger.warning("promoter round failed", exc_info=True)
            stop.wait(max(interval_s, 1.0))
