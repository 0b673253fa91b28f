"""Live status: one reader of the event stream per process, fanned out to in-memory feeds.

Every job change is already one entry in the global stream ``{p}:events`` and, with the same id, in the
job's own capped stream (see lua/transition.lua). A :class:`LiveHub` runs one daemon thread doing
``XREAD BLOCK`` on the global stream and hands each event, serialised once, to the :class:`Feed` of every
client that asked for it (one job, all of a tenant's jobs, or queue stats). A client costs no Redis
connection and no blocking read of its own; its handler thread waits on the feed's ``wake`` event, or the
hub writes to it directly (service/feed.py says how, and how a subscription avoids gaps and duplicates).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

from service.errors import BackendUnavailable
from service.feed import (
    CLOSE_FEED_INTERRUPTED,
    MAX_CHANNEL_REPLAY,
    Feed,
    _dumps,
    _Item,
    _StreamView,
    event_frame,
    parse_event_id,
)
from service.job import Job, now_ms
from service.state import JobState
from service.store import Event, JobStore, _decode

__all__ = ["LiveHub"]  # the feed side (Feed, Frame, close codes) is service.feed

logger = logging.getLogger(__name__)

#: Entries the reader takes per XREAD.
READ_BATCH = 500


class LiveHub:
    """The per-process fan-out of the event stream. Start it with :meth:`start` (idempotent)."""

    def __init__(self, store: JobStore, reader: redis.Redis, *, snapshots: redis.Redis | None = None,
                 buffer_events: int = 1000, stats_interval_s: float = 1.0, block_ms: int = 1000) -> None:
        self.store = store
        self.keys = store.keys
        #: Client for the snapshot and replay reads of subscriptions (a bounded, waiting pool is best:
        #: many clients may (re)subscribe at the same moment).
        self.snapshots = snapshots or store.redis
        self.buffer_events = buffer_events
        self.stats_interval_s = stats_interval_s
        self._reader = reader
        self._block_ms = block_ms
        self._lock = threading.Lock()
        self._by_job: dict[str, set[Feed]] = {}
        self._by_tenant: dict[str, set[Feed]] = {}
        self._stats_by_tenant: dict[str, set[Feed]] = {}
        self._feeds: set[Feed] = set()
        self._last_id = "0-0"
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.events_read = 0

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Fix the reading position (the stream's current tail) and start the reader and stats threads.
        Raises BackendUnavailable when Redis cannot be reached."""
        with self._lock:
            if self._threads and all(t.is_alive() for t in self._threads):
                return
            self._stop.clear()
            self._last_id = self._tail_id()  # before any feed reads its replay: nothing falls between
            self._threads = [
                threading.Thread(target=self._read_loop, name="conveyor-live-reader", daemon=True),
                threading.Thread(target=self._stats_loop, name="conveyor-live-stats", daemon=True),
            ]
            for t in self._threads:
                t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=(self._block_ms / 1000) + 2)

    def open(self, tenant: str, wake: threading.Event | None = None,
             direct: Callable[[tuple[str, ...]], bool] | None = None) -> Feed:
        """A new feed for one client of ``tenant``; ``wake`` is set whenever it has something to send, and
        ``direct`` (optional) writes an event to a caught-up client from the hub's thread (see :class:`Feed`)."""
        self.start()
        feed = Feed(self, tenant, wake, self.buffer_events, direct)
        with self._lock:
            self._feeds.add(feed)
        return feed

    @property
    def feed_count(self) -> int:
        return len(self._feeds)

    # -- routing tables ------------------------------------------------------------------------------

    def _watch_job(self, feed: Feed, job_id: str) -> None:
        with self._lock:
            self._by_job.setdefault(job_id, set()).add(feed)

    def _unwatch_job(self, feed: Feed, job_id: str) -> None:
        with self._lock:
            _discard(self._by_job, job_id, feed)

    def _watch_tenant(self, feed: Feed) -> None:
        with self._lock:
            self._by_tenant.setdefault(feed.tenant, set()).add(feed)

    def _unwatch_tenant(self, feed: Feed) -> None:
        with self._lock:
            _discard(self._by_tenant, feed.tenant, feed)

    def _watch_stats(self, feed: Feed) -> None:
        with self._lock:
            self._stats_by_tenant.setdefault(feed.tenant, set()).add(feed)

    def _unwatch_stats(self, feed: Feed) -> None:
        with self._lock:
            _discard(self._stats_by_tenant, feed.tenant, feed)

    def _forget(self, feed: Feed) -> None:
        with self._lock:
            self._feeds.discard(feed)
            for job_id in list(feed._jobs):
                _discard(self._by_job, job_id, feed)
            _discard(self._by_tenant, feed.tenant, feed)
            _discard(self._stats_by_tenant, feed.tenant, feed)

    # -- reads for subscriptions ---------------------------------------------------------------------

    def _tail_id(self) -> str:
        try:
            rows = self.store.redis.xrevrange(self.keys.events, count=1)
        except redis.RedisError as exc:
            raise BackendUnavailable("the job store (Redis) is unavailable", details={"backend": "redis"}) from exc
        return _decode(rows[0][0]) if rows else "0-0"

    def _read_stream(self, key: str, since: str | None, *, count: int | None, before: tuple[str, ...] = ()
                     ) -> tuple[list[Any], _StreamView]:
        """In one MULTI: the ``before`` reads (e.g. the record), then XINFO and XRANGE after ``since``."""
        try:
            pipe = self.snapshots.pipeline(transaction=True)
            for name in before:
                pipe.hgetall(name)
            pipe.xinfo_stream(key)
            if since is not None:
                pipe.xrange(key, min=f"({since}", max="+", count=count)
            out = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("live: reading %s failed: %r", key, exc)
            raise BackendUnavailable("the job store (Redis) is unavailable", details={"backend": "redis"}) from exc
        pre, info = out[: len(before)], out[len(before)]
        rows = out[len(before) + 1] if since is not None else []
        if isinstance(rows, Exception):
            raise rows
        events = [Event(_decode(i), {_decode(k): _decode(v) for k, v in f.items()}) for i, f in rows]
        if isinstance(info, Exception):  # no stream (never written, or expired with its record)
            return pre, _StreamView(events, None, gap=since is not None and _beyond_start(since))
        last_id = _decode(info["last-generated-id"])
        first = info.get("first-entry")
        trimmed = int(info.get("entries-added", info["length"])) > int(info["length"])
        gap = bool(since is not None and first and trimmed
                   and parse_event_id(since) < parse_event_id(_decode(first[0])))
        return pre, _StreamView(events, last_id, gap)

    def _read_job(self, job_id: str, since: str | None) -> tuple[Job | None, _StreamView]:
        (raw,), view = self._read_stream(self.keys.job_events(job_id), since, count=None,
                                         before=(self.keys.job(job_id),))
        if isinstance(raw, Exception):
            raise raw
        return (Job.from_hash(raw) if raw else None), view

    def _read_channel(self, since: str | None) -> _StreamView:
        _, view = self._read_stream(self.keys.events, since, count=MAX_CHANNEL_REPLAY + 1)
        if len(view.rows) > MAX_CHANNEL_REPLAY:
            return _StreamView([], view.last_id, gap=True)
        return view

    def stats(self, tenant: str) -> tuple[dict[str, dict[str, int]], str]:
        """The job counts of ``tenant`` and the ``stats`` message showing them (by state, per queue)."""
        per_queue = self.store.counts(tenant)
        totals = {s.value: 0 for s in JobState}
        for counts in per_queue.values():
            for state, n in counts.items():
                totals[state] = totals.get(state, 0) + n
        return per_queue, _dumps({"op": "stats", "states": totals, "queues": per_queue, "at": now_ms()})

    # -- the reader ----------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        backoff_s = 0.1
        while not self._stop.is_set():
            try:
                batches: Any = self._reader.xread({self.keys.events: self._last_id}, count=READ_BATCH,
                                                  block=self._block_ms)
                backoff_s = 0.1
            except redis.RedisError as exc:
                logger.warning("live reader: Redis error (%s); retrying in %.1fs", exc, backoff_s)
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                self._check_continuity()
                continue
            except Exception:
                logger.exception("live reader: unexpected error")
                self._stop.wait(1.0)
                continue
            for _stream, entries in batches or ():
                if entries:
                    self._last_id = _decode(entries[-1][0])
                    self.dispatch_many([(_decode(eid), {_decode(k): _decode(v) for k, v in fields.items()})
                                        for eid, fields in entries])

    def _check_continuity(self) -> None:
        """After a read error: if entries after our position were trimmed meanwhile, nobody can be told
        what they missed live, so every feed is dropped and its client resumes with ``since``."""
        try:
            info = self.store.redis.xinfo_stream(self.keys.events)
        except redis.ResponseError:
            return  # the stream is gone (e.g. flushed): nothing after our position survives either
        except redis.RedisError:
            return
        first = info.get("first-entry")
        trimmed = int(info.get("entries-added", info["length"])) > int(info["length"])
        if first and trimmed and parse_event_id(_decode(first[0])) > parse_event_id(self._last_id):
            logger.warning("live reader: events were trimmed while Redis was unreachable; dropping %d feeds",
                           len(self._feeds))
            for feed in list(self._feeds):
                feed._drop(CLOSE_FEED_INTERRUPTED, "live feed interrupted; resubscribe with since")

    def dispatch(self, event_id: str, fields: dict[str, str]) -> None:
        """Route one event to every feed that watches its job or its tenant's jobs."""
        self.dispatch_many([(event_id, fields)])

    def dispatch_many(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        """Route events (in stream order); a client that gets several of them gets them in one write."""
        self.events_read += len(entries)
        routed: list[tuple[str, dict[str, str], set[Feed]]] = []
        with self._lock:
            for event_id, fields in entries:
                job_id, tenant = fields.get("job"), fields.get("tenant")
                feeds = set(self._by_job.get(job_id, ())) if job_id else set()
                if tenant:
                    feeds.update(self._by_tenant.get(tenant, ()))
                if feeds:
                    routed.append((event_id, fields, feeds))
        per_feed: dict[Feed, list[_Item]] = {}
        for event_id, fields, feeds in routed:
            item: _Item = (parse_event_id(event_id), fields.get("job"), event_id, event_frame(Event(event_id, fields)))
            for feed in feeds:
                per_feed.setdefault(feed, []).append(item)
        # Feeds given the same events share one tuple of them (the writer encodes it once for all).
        shared: dict[tuple[str | None, ...], tuple[_Item, ...]] = {}
        for feed, items in per_feed.items():
            feed._offer_many(shared.setdefault(tuple(i[2] for i in items), tuple(items)))

    # -- stats ---------------------------------------------------------------------------------------

    def _stats_loop(self) -> None:
        while not self._stop.wait(self.stats_interval_s):
            with self._lock:
                tenants = {t: tuple(fs) for t, fs in self._stats_by_tenant.items() if fs}
            for tenant, feeds in tenants.items():
                try:
                    counts, text = self.stats(tenant)
                except BackendUnavailable as exc:
                    logger.warning("live stats: %s", exc.message)
                    continue
                for feed in feeds:
                    if feed._stats_seen != counts:  # on change only, judged per client
                        feed._stats_seen = counts
                        feed._offer((None, None, None, text))


def _discard(table: dict[str, set[Feed]], key: str, feed: Feed) -> None:
    feeds = table.get(key)
    if feeds is not None:
        feeds.discard(feed)
        if not feeds:
            del table[key]


def _beyond_start(since: str) -> bool:
    return parse_event_id(since) > (0, 0)
