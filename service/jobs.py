"""Submitting, cancelling, retrying and reading jobs: what the API (and any Python caller) uses.

Submit: validate -> one Lua call creates record, indexes and the first event -> confirmed publish. If the
publish is not confirmed, the record is removed again and BackendUnavailable is raised: never a job that
was answered 2xx but not in the broker, never a record of a job that was refused.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from dramatiq.results import ResultMissing
from dramatiq.results.backends import RedisBackend

from service.broker import publish
from service.errors import InvalidPayload, InvalidTransition, JobNotFound, ResultNotReady
from service.hooks import fire_final
from service.job import Job, now_ms
from service.message import job_message
from service.registry import Registry
from service.state import FINAL_STATES, JobState, Priority
from service.store import JobStore

__all__ = ["JobService", "Submission", "DEFAULT_TENANT", "MAX_DELAY_MS", "MAX_RETRIES_LIMIT"]

logger = logging.getLogger(__name__)

#: The one tenant until API keys exist.
DEFAULT_TENANT = "default"
#: Longest accepted delay (one year).
MAX_DELAY_MS = 365 * 24 * 3600 * 1000
#: Highest max_retries a submission may ask for.
MAX_RETRIES_LIMIT = 100


@dataclass
class Submission:
    """One job to submit, as the API receives it (``options`` carries e.g. ``callback_url``)."""

    type: str
    payload: dict[str, Any]
    priority: str | int | None = None
    max_retries: int | None = None
    delay_ms: int | None = None
    idempotency_key: str | None = None
    tenant: str = DEFAULT_TENANT
    options: dict[str, Any] = field(default_factory=dict)
    trace_id: str | None = None


def _int_between(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


class JobService:
    """The job facade over the store, the broker and the registry."""

    def __init__(self, store: JobStore, broker: dramatiq.Broker, registry: Registry, backend: RedisBackend) -> None:
        self.store = store
        self.broker = broker
        self.registry = registry
        self.backend = backend

    def build(self, sub: Submission) -> tuple[Job, int | None]:
        """Validate a submission into a new job record and its due time. Raises InvalidPayload/UnknownJobType."""
        jt = self.registry.get(sub.type)
        payload = jt.validate(sub.payload)
        errors: dict[str, list[str]] = {}
        try:
            priority = Priority.parse(sub.priority if sub.priority is not None else jt.priority)
        except ValueError as exc:
            errors["priority"] = [str(exc)]
            priority = 0
        max_retries = jt.max_retries if sub.max_retries is None else sub.max_retries
        if not _int_between(max_retries, 0, MAX_RETRIES_LIMIT):
            errors["max_retries"] = [f"must be an integer from 0 to {MAX_RETRIES_LIMIT}"]
        delay = sub.delay_ms or 0
        if not _int_between(delay, 0, MAX_DELAY_MS):
            errors["delay_ms"] = [f"must be an integer from 0 to {MAX_DELAY_MS}"]
        key = sub.idempotency_key
        if key is not None and not (isinstance(key, str) and 0 < len(key) <= 200):
            errors["idempotency_key"] = ["must be a string of 1 to 200 characters"]
        if errors:
            raise InvalidPayload("invalid job submission", details=errors)
        now = now_ms()
        due = now + delay if delay else None
        job = Job(
            id=str(uuid.uuid4()), type=jt.name, queue=jt.queue, tenant=sub.tenant, priority=priority,
            payload=payload, options=sub.options, state=JobState.SCHEDULED if due else JobState.QUEUED,
            max_retries=max_retries, created_at=now, updated_at=now, scheduled_for=due or 0,
            idempotency_key=sub.idempotency_key or "", trace_id=sub.trace_id or uuid.uuid4().hex,
        )
        return job, due

    def submit(self, sub: Submission) -> tuple[Job, bool]:
        """Record, then publish. Returns ``(job, created)``; ``created`` is False for an idempotent replay."""
        job, due = self.build(sub)
        job_id, created = self.store.create(job, due_ms=due)
        if not created:
            existing = self.store.get(job_id, sub.tenant)
            if existing is None:
                raise JobNotFound("the job for this idempotency key has expired")
            return existing, False
        if due is None:
            try:
                publish(self.broker, job)
            except Exception:
                self.store.abort(job)
                raise
        return job, True

    def submit_many(self, subs: list[Submission]) -> list[tuple[Job, bool]]:
        """Validate every submission first (all or nothing), then record and publish each."""
        built = [self.build(s) for s in subs]
        out: list[tuple[Job, bool]] = []
        for (job, due), sub in zip(built, subs, strict=True):
            job_id, created = self.store.create(job, due_ms=due)
            if not created:
                existing = self.store.get(job_id, sub.tenant)
                out.append((existing or job, False))
                continue
            if due is None:
                try:
                    publish(self.broker, job)
                except Exception:
                    self.store.abort(job)
                    for done, was_created in out:  # nothing of a refused batch stays queued
                        if was_created:
                            self.cancel(done.id, sub.tenant)
                    raise
            out.append((job, True))
        return out

    def get(self, job_id: str, tenant: str = DEFAULT_TENANT) -> Job:
        job = self.store.get(job_id, tenant)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}", details={"job_id": job_id})
        return job

    def cancel(self, job_id: str, tenant: str = DEFAULT_TENANT) -> Job:
        """Cancel a job. Waiting jobs never run; a running job is asked to stop (it ends ``cancelled``).
        Raises InvalidTransition when the job is already final."""
        job = self.get(job_id, tenant)
        if job.state in FINAL_STATES:
            raise InvalidTransition(f"job is already {job.state.value}", details={"state": job.state.value})
        if job.state is JobState.RUNNING:
            res = self.store.transition(job_id, JobState.RUNNING, from_={JobState.RUNNING},
                                        set_fields={"cancel_requested": 1}, kind="cancel_requested")
            if res.ok:
                self.store.redis.publish(self.store.keys.cancel_channel, job_id)
                return self.get(job_id, tenant)
        else:
            res = self.store.transition(job_id, JobState.CANCELLED, from_={JobState.QUEUED, JobState.SCHEDULED,
                                        JobState.RETRYING}, set_fields={"finished_at": now_ms()}, unschedule=True)
            if res.ok:
                fire_final(job_id, JobState.CANCELLED, job.options)
                return self.get(job_id, tenant)
        # It moved under us (started or finished): answer from what it is now.
        job = self.get(job_id, tenant)
        if job.state in FINAL_STATES:
            raise InvalidTransition(f"job is already {job.state.value}", details={"state": job.state.value})
        return self.cancel(job_id, tenant)

    def retry(self, job_id: str, tenant: str = DEFAULT_TENANT) -> Job:
        """Re-drive a failed or cancelled job: a new run of the same job id with a fresh retry budget."""
        job = self.get(job_id, tenant)
        res = self.store.transition(
            job_id, JobState.QUEUED, from_={JobState.FAILED, JobState.CANCELLED}, generation=job.generation,
            set_fields={"retries": 0, "cancel_requested": 0, "finished_at": 0, "progress": 0, "progress_message": ""},
            incr={"generation": 1},
        )
        if not res.ok:
            current = res.state.value if res.state else "unknown"
            raise InvalidTransition(f"only failed or cancelled jobs can be retried; this one is {current}",
                                    details={"state": current})
        job = self.get(job_id, tenant)
        try:
            publish(self.broker, job)
        except Exception:
            # Put it back where it was, so that a later retry can try again.
            self.store.transition(job_id, res.previous or JobState.FAILED, from_={JobState.QUEUED},
                                  generation=job.generation, set_fields={"finished_at": now_ms()})
            raise
        return job

    def result(self, job_id: str, tenant: str = DEFAULT_TENANT) -> Any:
        """The job's return value. Raises ResultNotReady unless it succeeded, JobNotFound if it expired."""
        job = self.get(job_id, tenant)
        if job.state is not JobState.SUCCEEDED:
            raise ResultNotReady(f"job is {job.state.value}; a result exists once it succeeded",
                                 details={"state": job.state.value})
        try:
            return self.backend.get_result(job_message(job))
        except ResultMissing:
            raise JobNotFound("the result has expired", details={"job_id": job_id}) from None
