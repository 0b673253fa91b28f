"""Live status: one reader of the event stream per process, fanned out to in-memory feeds.

Every job change is already one entry in the global stream ``{p}:events`` and, with the same id, in the
job's own capped stream (see lua/transition.lua). A :class:`LiveHub` runs one daemon thread doing
``XREAD BLOCK`` on the global stream and hands each event, serialised once, to the :class:`Feed` of every
client that asked for it (one job, all of a tenant's jobs, or queue stats). A client costs no Redis
connection and no blocking read of its own; its handler thread waits on the feed's ``wake`` event.

Writing directly: waking one thread per client for every event costs a GIL hand-off per client (with 1,000
WebSockets that alone took hundreds of milliseconds per event). A feed may therefore carry a ``direct``
writer: when the client is caught up (nothing buffered, nothing half-written) and its own thread is idle
(the hub gets ``feed.lock`` without waiting), the hub's thread writes the frame itself, without blocking, and
wakes nobody. Otherwise (the lock is busy: a subscription, a replay or a send is under way; or the socket
would block) the event is buffered as before and the client's thread delivers it, after everything that
came earlier. The delivered positions are updated under the same lock, so either path skips exactly what
the other already sent.

Subscribing without gaps or duplicates: the feed is registered *first* (live events start buffering),
then the record and the job's events after ``since`` are read in one MULTI, then buffered live events are
delivered skipping every id not newer than the last one already covered. A ``since`` older than what the
stream still retains is answered with ``"gap": true``.

A feed whose buffer overflows (a client that does not keep up) is dropped with
:data:`CLOSE_SLOW_CONSUMER` instead of slowing the others.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from service.errors import BackendUnavailable, InvalidPayload, JobNotFound
from service.job import Job, now_ms
from service.state import JobState
from service.store import Event, JobStore

__all__ = [
    "LiveHub",
    "Feed",
    "Frame",
    "CHANNELS",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_FEED_INTERRUPTED",
    "CLOSE_NOT_FOUND",
    "parse_event_id",
]

logger = logging.getLogger(__name__)

#: Close code: the client did not read fast enough and its buffer overflowed; reconnect with ``since``.
CLOSE_SLOW_CONSUMER = 4001
#: Close code: this process lost its reading position in the stream; reconnect with ``since``.
CLOSE_FEED_INTERRUPTED = 4002
#: Close code: the job named in the URL does not exist (or belongs to another tenant).
CLOSE_NOT_FOUND = 4004
#: Channels a feed can subscribe to besides single jobs.
CHANNELS = frozenset({"jobs", "stats"})
#: Most jobs one feed may watch at once.
MAX_JOB_SUBSCRIPTIONS = 1000
#: Most events replayed on a ``jobs`` channel subscription with ``since``; more is reported as a gap.
MAX_CHANNEL_REPLAY = 1000
#: Entries the reader takes per XREAD.
READ_BATCH = 500

_EVENT_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
_Key = tuple[int, int]
#: A buffered item: (id key, job id, event id, JSON text); stats items have key None.
_Item = tuple[_Key | None, str | None, str | None, str]


def parse_event_id(value: str) -> _Key:
    """A stream id ``"<ms>-<seq>"`` (or ``"<ms>"``) as a tuple that orders like the stream does."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def _checked_since(since: Any) -> str | None:
    if since is None or since == "":
        return None
    if not isinstance(since, str) or not _EVENT_ID.match(since):
        raise InvalidPayload("since must be an event id such as '1712345678901-0'", details={"since": ["Invalid."]})
    return since


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def event_frame(event: Event) -> str:
    """The JSON text a client receives for one event."""
    return _dumps({"op": "event", **event.to_api()})


@dataclass(frozen=True)
class Frame:
    """One message for a client: JSON text, and the event id it carries (SSE sends it as ``id:``)."""

    data: str
    event_id: str | None = None


@dataclass(frozen=True)
class _StreamView:
    """What one MULTI saw of a stream: the entries after ``since`` and whether some were trimmed away."""

    rows: list[Event]
    last_id: str | None
    gap: bool


class Feed:
    """One client's subscriptions and its bounded buffer of live events.

    Methods other than the buffer's ``_offer`` are called from the client's own thread only. With a
    ``direct`` writer, that thread holds :attr:`lock` whenever it works on the feed or writes to the client.
    """

    def __init__(self, hub: LiveHub, tenant: str, wake: threading.Event | None, buffer_events: int,
                 direct: Callable[[tuple[str, ...]], bool] | None = None) -> None:
        self.hub = hub
        self.tenant = tenant
        #: Set whenever something was buffered or the feed was dropped.
        self.wake = wake or threading.Event()
        #: Writes messages to the client in one go without blocking, from the hub's thread and with
        #: :attr:`lock` held; True when the client has them (or the writer keeps the unwritten rest and
        #: sends that before anything else), False when nothing was written (the events are then buffered).
        self.direct = direct
        #: Held by the client's thread while it subscribes, drains or writes; the hub only tries it.
        self.lock = threading.RLock()
        #: Events the hub wrote directly (see ``direct``).
        self.sent_direct = 0
        #: Close code once the hub dropped this feed (None while it is healthy).
        self.dropped: int | None = None
        self.drop_reason = ""
        #: Called (from the hub's thread) when the feed is dropped, e.g. to unblock a stuck socket.
        self.on_drop: Callable[[], None] | None = None
        self._buffer: deque[_Item] = deque()
        self._max = buffer_events
        self._jobs: dict[str, _Key] = {}  # job id -> newest event id delivered or covered
        self._all_jobs: _Key | None = None  # the same for the "jobs" channel, when subscribed
        self._stats = False
        self._stats_seen: dict[str, dict[str, int]] | None = None

    # -- called by the hub's threads -----------------------------------------------------------------

    def _offer(self, item: _Item) -> bool:
        return self._offer_many((item,))

    def _offer_many(self, items: tuple[_Item, ...] | list[_Item]) -> bool:
        """Deliver events (in stream order) to the client: written directly when it can be done at once,
        else buffered. False when the feed is (or just got) dropped."""
        if self.dropped is not None:
            return False
        if self.direct is not None and not self._buffer and self.lock.acquire(blocking=False):
            try:
                if self._write_direct(items):
                    return True
            finally:
                self.lock.release()
        for item in items:
            if len(self._buffer) >= self._max:
                self._drop(CLOSE_SLOW_CONSUMER, f"too slow: more than {self._max} undelivered events")
                return False
            self._buffer.append(item)
        self.wake.set()
        return True

    def _write_direct(self, items: tuple[_Item, ...] | list[_Item]) -> bool:
        """With :attr:`lock` held: deliver ``items`` now, in one write, if the client is caught up. False:
        nothing was written, buffer them all."""
        direct = self.direct
        if direct is None or self.dropped is not None or self._buffer:
            return False
        jobs: dict[str, _Key] = {}  # positions as they will be once these are delivered
        all_jobs = self._all_jobs
        texts: list[str] = []
        for key, job_id, _event_id, text in items:
            if key is None:
                return False  # stats messages take the buffered path
            last = jobs.get(job_id, self._jobs.get(job_id)) if job_id is not None else None
            to_job, to_all = last is not None and key > last, all_jobs is not None and key > all_jobs
            if to_job:
                jobs[job_id] = key  # type: ignore[index]
            if to_all:
                all_jobs = key
            if to_job or to_all:
                texts.append(text)
        if texts and not direct(tuple(texts)):
            return False
        self._jobs.update(jobs)
        self._all_jobs = all_jobs
        self.sent_direct += len(texts)
        return True

    def _wanted(self, key: _Key, job_id: str | None) -> tuple[bool, bool]:
        """Whether an event is new to the client as an event of a watched job, and of the jobs channel."""
        last = self._jobs.get(job_id) if job_id is not None else None
        return (last is not None and key > last), (self._all_jobs is not None and key > self._all_jobs)

    def _delivered(self, key: _Key, job_id: str | None, to_job: bool, to_all: bool) -> None:
        if to_job:
            self._jobs[job_id] = key  # type: ignore[index]
        if to_all:
            self._all_jobs = key

    def _drop(self, code: int, reason: str) -> None:
        if self.dropped is not None:
            return
        self.dropped, self.drop_reason = code, reason
        self._buffer.clear()
        self.wake.set()
        self.hub._forget(self)
        if self.on_drop is not None:
            try:
                self.on_drop()
            except Exception:
                logger.exception("on_drop callback failed")

    # -- called by the client's thread ---------------------------------------------------------------

    @property
    def jobs(self) -> frozenset[str]:
        return frozenset(self._jobs)

    def subscribe_job(self, job_id: str, since: Any = None) -> list[Frame]:
        """Watch ``job_id``: returns its snapshot and the events after ``since``; live events follow in
        :meth:`drain`. Raises JobNotFound (also for another tenant's job) and InvalidPayload."""
        since = _checked_since(since)
        if not isinstance(job_id, str) or not job_id or len(job_id) > 200:
            raise InvalidPayload("job_id must be a job id", details={"job_id": ["Invalid."]})
        if job_id not in self._jobs and len(self._jobs) >= MAX_JOB_SUBSCRIPTIONS:
            raise InvalidPayload(f"a connection may watch at most {MAX_JOB_SUBSCRIPTIONS} jobs",
                                 details={"job_id": ["Too many subscriptions."]})
        fresh = job_id not in self._jobs
        self.hub._watch_job(self, job_id)  # first: from here on live events of the job are buffered
        try:
            job, view = self.hub._read_job(job_id, since)
        except Exception:
            if fresh:
                self.hub._unwatch_job(self, job_id)
            raise
        if job is None or job.tenant != self.tenant:
            if fresh:
                self.hub._unwatch_job(self, job_id)
            raise JobNotFound(f"no job {job_id}", details={"job_id": job_id})
        covered = _newest(view.last_id, since)
        self._jobs[job_id] = covered
        frames = [Frame(_dumps({"op": "snapshot", "job": job.to_api(), "event_id": view.last_id, "gap": view.gap}))]
        frames += [Frame(event_frame(e), e.event_id) for e in view.rows]
        return frames

    def unsubscribe_job(self, job_id: str) -> bool:
        if self._jobs.pop(job_id, None) is None:
            return False
        self.hub._unwatch_job(self, job_id)
        return True

    def subscribe_channel(self, name: Any, since: Any = None) -> list[Frame]:
        """Subscribe to ``jobs`` (every event of the tenant's jobs, replayed after ``since``) or ``stats``
        (state counts now, then on change)."""
        since = _checked_since(since)
        if name == "stats":
            self._stats_seen, text = self.hub.stats(self.tenant)
            self._stats = True
            self.hub._watch_stats(self)
            return [Frame(_dumps({"op": "subscribed", "channel": "stats"})), Frame(text)]
        if name != "jobs":
            raise InvalidPayload(f"unknown channel {name!r}; expected one of {sorted(CHANNELS)}",
                                 details={"channel": ["Unknown."]})
        fresh = self._all_jobs is None
        self.hub._watch_tenant(self)
        try:
            view = self.hub._read_channel(since)
        except Exception:
            if fresh:
                self.hub._unwatch_tenant(self)
            raise
        self._all_jobs = parse_event_id(_newest_str(view.last_id, since) or "0-0")
        mine = [e for e in view.rows if e.fields.get("tenant") == self.tenant]
        head = Frame(_dumps({"op": "subscribed", "channel": "jobs", "event_id": view.last_id, "gap": view.gap}))
        return [head] + [Frame(event_frame(e), e.event_id) for e in mine]

    def unsubscribe_channel(self, name: Any) -> bool:
        if name == "stats" and self._stats:
            self._stats = False
            self.hub._unwatch_stats(self)
            return True
        if name == "jobs" and self._all_jobs is not None:
            self._all_jobs = None
            self.hub._unwatch_tenant(self)
            return True
        return False

    def drain(self) -> list[Frame]:
        """Buffered live messages, in order, without anything already delivered or replayed."""
        out: list[Frame] = []
        while True:
            try:
                key, job_id, event_id, text = self._buffer.popleft()
            except IndexError:
                return out
            if key is None:
                if self._stats:
                    out.append(Frame(text))
                continue
            to_job, to_all = self._wanted(key, job_id)
            if to_job or to_all:
                self._delivered(key, job_id, to_job, to_all)
                out.append(Frame(text, event_id))

    def close(self) -> None:
        """Stop receiving; the hub forgets the feed (and writes nothing more to the client)."""
        with self.lock:
            self.direct = None
            self.hub._forget(self)
            self._jobs.clear()
            self._all_jobs = None
            self._stats = False


def _newest(last_id: str | None, since: str | None) -> _Key:
    return parse_event_id(_newest_str(last_id, since) or "0-0")


def _newest_str(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if parse_event_id(a) >= parse_event_id(b) else b


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
        return _text(rows[0][0]) if rows else "0-0"

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
        events = [Event(_text(i), {_text(k): _text(v) for k, v in f.items()}) for i, f in rows]
        if isinstance(info, Exception):  # no stream (never written, or expired with its record)
            return pre, _StreamView(events, None, gap=since is not None and _beyond_start(since))
        last_id = _text(info["last-generated-id"])
        first = info.get("first-entry")
        trimmed = int(info.get("entries-added", info["length"])) > int(info["length"])
        gap = bool(since is not None and first and trimmed
                   and parse_event_id(since) < parse_event_id(_text(first[0])))
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
                    self._last_id = _text(entries[-1][0])
                    self.dispatch_many([(_text(eid), {_text(k): _text(v) for k, v in fields.items()})
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
        if first and trimmed and parse_event_id(_text(first[0])) > parse_event_id(self._last_id):
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
