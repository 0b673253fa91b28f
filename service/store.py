"""The job store: records, indexes, counters, the schedule and event streams in Redis.

Every write of job state is one Lua call (one round trip) through :meth:`JobStore.transition`, a
compare-and-set checked against :data:`service.state.TRANSITIONS`. Redis errors become
:class:`~service.errors.BackendUnavailable` here, at the boundary.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar, cast

import redis

from service.config import Settings
from service.errors import BackendUnavailable, InvalidPayload
from service.job import Job, now_ms
from service.keys import Keys
from service.state import JobState, allowed_sources

__all__ = ["JobStore", "TransitionResult", "Event"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: What a Redis stream entry id (an event id) looks like: "<ms>-<seq>" or "<ms>".
EVENT_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")


@dataclass(frozen=True)
class TransitionResult:
    """What a compare-and-set did. ``reason`` is why it refused: not_found, state, generation or poison."""

    ok: bool
    state: JobState | None
    previous: JobState | None = None
    generation: int | None = None
    event_id: str | None = None
    reason: str | None = None
    cancel_requested: bool = False
    attempts: int = 0


@dataclass(frozen=True)
class Event:
    """One job event, as read from a stream."""

    event_id: str
    fields: dict[str, str]

    def to_api(self) -> dict[str, Any]:
        f = self.fields
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "job_id": f.get("job"),
            "kind": f.get("kind", "state"),
            "type": f.get("type"),
            "queue": f.get("queue"),
            "state": f.get("state"),
            "progress": {"percent": int(f.get("percent") or 0), "message": f.get("message", "")},
            "attempt": int(f.get("attempt") or 0),
            "at": int(f.get("at") or 0),
        }
        if f.get("error_type"):
            out["error"] = {"type": f["error_type"], "message": f.get("error_message", "")}
        return out


def _wrap_redis(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendUnavailable("the job store (Redis) is unavailable", details={"backend": "redis"}) from exc

    return wrapper


def _decode(value: Any) -> str:
    """A Redis reply item as text (redis-py types replies loosely; ours are bytes or str)."""
    return value.decode() if isinstance(value, bytes) else str(value)


class JobStore:
    """Job records and their indexes in Redis."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._scripts = {
            name: client.register_script(resources.files("service.lua").joinpath(f"{name}.lua").read_text())
            for name in ("create", "transition", "abort", "claim")
        }

    # -- writes ---------------------------------------------------------------------------------------

    @_wrap_redis
    def create(self, job: Job, *, due_ms: int | None = None, idem_ttl_s: int = 24 * 3600) -> tuple[str, bool]:
        """Store a new job (record, indexes, counters, event; schedule entry if ``due_ms``).

        Returns ``(job_id, created)``; ``created`` is False when the idempotency key or the id already
        named a job, whose id is returned instead.
        """
        spec = {
            "prefix": self.keys.prefix,
            "id": job.id,
            "fields": job.to_hash(),
            "due_ms": due_ms,
            "idem_key": self.keys.idempotency(job.tenant, job.idempotency_key) if job.idempotency_key else None,
            "idem_ttl_s": idem_ttl_s,
            "events_maxlen": self.settings.event_stream_maxlen,
            "job_events_maxlen": self.settings.job_event_maxlen,
        }
        out = json.loads(self._scripts["create"](args=[json.dumps(spec)]))
        return out["id"], bool(out["created"])

    @_wrap_redis
    def abort(self, job: Job) -> None:
        """Remove a job whose publish failed, so that nothing half-created remains."""
        spec = {
            "prefix": self.keys.prefix,
            "id": job.id,
            "idem_key": self.keys.idempotency(job.tenant, job.idempotency_key) if job.idempotency_key else None,
            "events_maxlen": self.settings.event_stream_maxlen,
            "now": now_ms(),
        }
        self._scripts["abort"](args=[json.dumps(spec)])

    @_wrap_redis
    def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        from_: set[JobState] | frozenset[JobState] | None = None,
        generation: int | None = None,
        set_fields: dict[str, Any] | None = None,
        incr: dict[str, int] | None = None,
        due_ms: int | None = None,
        unschedule: bool = False,
        max_crash: int | None = None,
        kind: str = "state",
        result: tuple[str, str, int] | None = None,
    ) -> TransitionResult:
        """Move ``job_id`` to ``to`` if its state is one of ``from_`` (default: every legal source) and,
        when ``generation`` is given, if the record is on that generation. Updates record, indexes,
        counters, schedule and events at once. Final states get the job TTL; others lose any TTL.
        ``result`` = (key, encoded value, ttl_ms) is written to the result backend in the same step.
        """
        sources = allowed_sources(to)
        if from_ is not None:
            sources = sources & frozenset(from_)
        spec = {
            "prefix": self.keys.prefix,
            "id": job_id,
            "to": to.value,
            "from": sorted(s.value for s in sources),
            "gen": generation,
            "now": now_ms(),
            "set": {k: json.dumps(v) if isinstance(v, dict | list) else str(v) for k, v in (set_fields or {}).items()},
            "incr": incr or {},
            "due_ms": due_ms,
            "unschedule": unschedule,
            "expire_s": self.settings.job_ttl_s if to.is_final else None,
            "max_crash": max_crash,
            "kind": kind,
            "events_maxlen": self.settings.event_stream_maxlen,
            "job_events_maxlen": self.settings.job_event_maxlen,
        }
        if not spec["set"]:
            spec["set"] = {"updated_at": str(spec["now"])}  # cjson turns an empty table into [] otherwise
        if not spec["incr"]:
            spec.pop("incr")
        if result is not None:
            spec["result_key"], spec["result_value"], spec["result_ttl_ms"] = result
        out = json.loads(self._scripts["transition"](args=[json.dumps(spec)]))
        return TransitionResult(
            ok=bool(out["ok"]),
            state=JobState(out["state"]) if out.get("state") else None,
            previous=JobState(out["previous"]) if out.get("previous") else None,
            generation=out.get("generation"),
            event_id=out.get("event_id"),
            reason=out.get("reason"),
            cancel_requested=bool(out.get("cancel_requested")),
            attempts=int(out.get("attempts") or 0),
        )

    def progress(self, job_id: str, generation: int, percent: int, message: str = "") -> TransitionResult:
        """Record progress of the running attempt ``generation`` (ignored once it is no longer running)."""
        return self.transition(
            job_id, JobState.RUNNING, from_={JobState.RUNNING}, generation=generation,
            set_fields={"progress": max(0, min(100, int(percent))), "progress_message": message[:500]},
            kind="progress",
        )

    # -- reads ----------------------------------------------------------------------------------------

    @_wrap_redis
    def get(self, job_id: str, tenant: str | None = None) -> Job | None:
        """The job, or None when it does not exist or belongs to another tenant."""
        raw = self.redis.hgetall(self.keys.job(job_id))
        if not raw:
            return None
        job = Job.from_hash(raw)
        if tenant is not None and job.tenant != tenant:
            return None
        return job

    @_wrap_redis
    def cancel_requested(self, job_id: str) -> bool:
        return _decode(self.redis.hget(self.keys.job(job_id), "cancel_requested") or b"0") == "1"

    @_wrap_redis
    def list_jobs(
        self,
        tenant: str,
        *,
        state: str | None = None,
        type: str | None = None,
        queue: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> tuple[list[Job], int | None]:
        """Jobs newest first, filtered; returns ``(jobs, next_cursor)``. The cursor is the last seq seen."""
        filters = [(k, v) for k, v in (("state", state), ("type", type), ("queue", queue)) if v]
        index = self.keys.index(tenant, *filters[0]) if filters else self.keys.index(tenant)
        rest = filters[1:]
        jobs: list[Job] = []
        high: str = f"({cursor}" if cursor is not None else "+inf"
        while len(jobs) < limit:
            batch = cast("list[tuple[bytes, float]]", self.redis.zrevrangebyscore(
                index, high, "-inf", start=0, num=max(limit * 2, 50), withscores=True))
            if not batch:
                return jobs, None
            pipe = self.redis.pipeline(transaction=False)
            for member, _ in batch:
                pipe.hgetall(self.keys.job(_decode(member)))
            for (_member, score), raw in zip(batch, pipe.execute(), strict=True):
                high = f"({int(score)}"
                if not raw:
                    continue  # expired record; the clean-up job drops its index entries
                job = Job.from_hash(raw)
                if all(getattr(job, k) == v or (k == "state" and job.state.value == v) for k, v in rest):
                    jobs.append(job)
                    if len(jobs) == limit:
                        return jobs, int(score)
        return jobs, None

    @_wrap_redis
    def counts(self, tenant: str | None = None) -> dict[str, dict[str, int]]:
        """``{queue: {state: n}}`` over the given tenant (or all tenants)."""
        out: dict[str, dict[str, int]] = {}
        for key, value in self.redis.hgetall(self.keys.counts).items():
            t, queue, state = _decode(key).split("|")
            if tenant is not None and t != tenant:
                continue
            per_queue = out.setdefault(queue, {s.value: 0 for s in JobState})
            per_queue[state] = per_queue.get(state, 0) + int(value)
        return out

    @_wrap_redis
    def job_events(self, job_id: str, after: str = "-", count: int | None = None) -> list[Event]:
        """That job's events after ``after`` (an event id, exclusive; "-" for all). Raises InvalidPayload
        for something that is not an event id."""
        if after not in ("-", "") and not EVENT_ID.match(after):
            raise InvalidPayload("since must be an event id such as '1712345678901-0'", details={"since": ["Invalid."]})
        start = f"({after}" if after not in ("-", "0", "") else "-"
        rows = cast("list[tuple[bytes, dict[bytes, bytes]]]",
                    self.redis.xrange(self.keys.job_events(job_id), min=start, max="+", count=count))
        return [Event(_decode(eid), {_decode(k): _decode(v) for k, v in f.items()}) for eid, f in rows]

    # -- schedule -------------------------------------------------------------------------------------

    @_wrap_redis
    def claim_due(self, limit: int = 100, lease_ms: int = 30_000) -> list[str]:
        """Atomically claim schedule entries that are due; see lua/claim.lua."""
        now = now_ms()
        ids = self._scripts["claim"](keys=[self.keys.schedule, self.keys.claimed], args=[now, limit, now + lease_ms])
        return [_decode(i) for i in ids]

    @_wrap_redis
    def release_claim(self, job_id: str) -> None:
        self.redis.zrem(self.keys.claimed, job_id)

    # -- workers --------------------------------------------------------------------------------------

    @_wrap_redis
    def worker_heartbeat(self, worker_id: str) -> None:
        now = now_ms()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.keys.workers, {worker_id: now})
        pipe.zremrangebyscore(self.keys.workers, "-inf", now - 10 * int(self.settings.worker_stale_s * 1000))
        pipe.execute()

    @_wrap_redis
    def live_workers(self) -> list[str]:
        since = now_ms() - int(self.settings.worker_stale_s * 1000)
        return [_decode(w) for w in self.redis.zrangebyscore(self.keys.workers, since, "+inf")]

    @_wrap_redis
    def ping(self) -> bool:
        return bool(self.redis.ping())

    @contextmanager
    def lock(self, name: str, ttl_ms: int) -> Iterator[bool]:
        """A best-effort mutual exclusion across processes: yields whether this caller holds the lock."""
        key = self.keys.lock(name)
        token = str(now_ms())
        held = bool(self.redis.set(key, token, nx=True, px=ttl_ms))
        try:
            yield held
        finally:
            if held and _decode(self.redis.get(key) or b"") == token:
                self.redis.delete(key)
