"""House-keeping run by the scheduler: index entries and counters of jobs whose records expired."""

from __future__ import annotations

import logging

from service.state import JobState
from service.store import JobStore, _decode

__all__ = ["purge_expired"]

logger = logging.getLogger(__name__)

#: Index members looked at per Redis round trip.
BATCH = 500


def purge_expired(store: JobStore) -> int:
    """Drop index entries and counts of jobs whose record has expired (final jobs get a TTL). Returns how
    many jobs were purged. Safe to run concurrently: ZREM and the count decrement happen once per member."""
    purged = 0
    r = store.redis
    pattern = f"{store.keys.prefix}:t:*:idx:queue:*"
    for raw_key in r.scan_iter(match=pattern, count=200):
        key = _decode(raw_key)
        head, queue = key.rsplit(":idx:queue:", 1)
        tenant = head.split(":t:", 1)[1]
        start = 0
        while True:
            members = [_decode(m) for m in r.zrange(key, start, start + BATCH - 1)]
            if not members:
                break
            pipe = r.pipeline(transaction=False)
            for m in members:
                pipe.exists(store.keys.job(m))
            gone = [m for m, exists in zip(members, pipe.execute(), strict=True) if not exists]
            for job_id in gone:
                purged += _purge_one(store, tenant, queue, job_id)
            start += BATCH - len(gone)
    if purged:
        logger.info("purged %d expired jobs from the indexes", purged)
    return purged


def _purge_one(store: JobStore, tenant: str, queue: str, job_id: str) -> int:
    r = store.redis
    if not r.zrem(store.keys.index(tenant, "queue", queue), job_id):
        return 0  # another purger got it
    pipe = r.pipeline(transaction=False)
    for state in JobState:
        pipe.zrem(store.keys.index(tenant, "state", state.value), job_id)
    removed = pipe.execute()
    pipe = r.pipeline(transaction=False)
    for state, was in zip(JobState, removed, strict=True):
        if was:
            pipe.hincrby(store.keys.counts, f"{tenant}|{queue}|{state.value}", -1)
    pipe.zrem(store.keys.index(tenant), job_id)
    pipe.execute()
    for raw_key in r.scan_iter(match=f"{store.keys.index_prefix(tenant)}type:*", count=200):
        r.zrem(raw_key, job_id)
    return 1
