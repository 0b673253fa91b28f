"""One live client's side of live status: its subscriptions, its bounded buffer and how events reach it.

The :class:`service.live.LiveHub` of the process hands every event to the feeds that asked for it.

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
from typing import TYPE_CHECKING, Any

from service.errors import InvalidPayload, JobNotFound
from service.store import Event

if TYPE_CHECKING:
    from service.live import LiveHub

__all__ = [
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

