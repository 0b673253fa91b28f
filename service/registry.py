"""The job-type registry: each job type is a Dramatiq actor plus a payload schema, a queue and defaults.

Job modules (``actors/...``) declare types with :func:`job_type`; the API finds them here by name and
never imports ``actors``. A job type's function receives the validated payload as keyword arguments.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import dramatiq
from marshmallow import Schema, ValidationError, missing

from service.errors import InvalidPayload, PermanentJobError, UnknownJobType

__all__ = ["Backoff", "JobType", "job_type", "registry", "Registry"]


@dataclass(frozen=True)
class Backoff:
    """How long to wait before retry number ``n`` (1-based): fixed, linear or exponential, with jitter."""

    kind: str = "exponential"
    base_s: float = 1.0
    max_s: float = 300.0
    #: Fraction of the delay drawn at random (0.2 = +/-20%), so retries of many jobs do not stampede.
    jitter: float = 0.2

    def delay_s(self, n: int) -> float:
        if self.kind == "fixed":
            delay = self.base_s
        elif self.kind == "linear":
            delay = self.base_s * n
        else:
            delay = self.base_s * (2 ** (n - 1))
        delay = min(delay, self.max_s)
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, delay)

    def to_api(self) -> dict[str, Any]:
        return {"kind": self.kind, "base_s": self.base_s, "max_s": self.max_s, "jitter": self.jitter}


def _default_retryable(exc: BaseException) -> bool:
    return not isinstance(exc, (PermanentJobError, ValidationError))


@dataclass
class JobType:
    """A registered job type."""

    name: str
    fn: Callable[..., Any]
    schema: type[Schema]
    queue: str = "default"
    priority: str | int = "normal"
    max_retries: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    time_limit_s: float = 600.0
    description: str = ""
    #: Decides whether an exception may be retried; non-retryable errors fail the job at once.
    retryable: Callable[[BaseException], bool] = _default_retryable
    actor: dramatiq.Actor[Any, Any] | None = None

    @functools.cached_property
    def loader(self) -> Schema:
        """One schema instance per type, shared by all threads: a marshmallow schema holds reference cycles,
        so one built per call left ~40 objects per job for the cyclic GC, whose full passes then paused
        the api for 50-180 ms under load."""
        return self.schema()

    def validate(self, payload: Any) -> dict[str, Any]:
        """The payload as the schema loads it. Raises InvalidPayload with field messages."""
        if not isinstance(payload, dict):
            raise InvalidPayload("payload must be a JSON object", details={"payload": ["Not a JSON object."]})
        try:
            return cast("dict[str, Any]", self.loader.load(payload))
        except ValidationError as exc:
            raise InvalidPayload(f"invalid payload for {self.name}", details={"payload": exc.messages}) from None

    def describe(self) -> dict[str, Any]:
        """What ``GET /api/job-types`` shows."""
        return {
            "name": self.name,
            "description": self.description,
            "queue": self.queue,
            "priority": self.priority,
            "max_retries": self.max_retries,
            "backoff": self.backoff.to_api(),
            "time_limit_s": self.time_limit_s,
            "payload_schema": schema_fields(self.schema),
        }


def schema_fields(schema: type[Schema]) -> dict[str, Any]:
    """A small JSON description of a marshmallow schema's fields."""
    out: dict[str, Any] = {}
    for name, f in schema().fields.items():
        entry: dict[str, Any] = {"type": type(f).__name__, "required": f.required}
        default = f.load_default
        if default is not None and default is not missing and not callable(default):
            entry["default"] = default
        if f.metadata.get("description"):
            entry["description"] = f.metadata["description"]
        out[f.data_key or name] = entry
    return out


class Registry:
    """Job types by name."""

    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}

    def add(self, jt: JobType) -> JobType:
        self._types[jt.name] = jt
        return jt

    def get(self, name: str) -> JobType:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownJobType(f"no job type named {name!r}", details={"type": name}) from None

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def all(self) -> list[JobType]:
        return sorted(self._types.values(), key=lambda jt: jt.name)

    def queues(self) -> list[str]:
        return sorted({jt.queue for jt in self._types.values()})


#: The process-wide registry that :func:`job_type` fills.
registry = Registry()


def job_type(
    name: str,
    *,
    schema: type[Schema],
    queue: str = "default",
    priority: str | int = "normal",
    max_retries: int = 3,
    backoff: Backoff | None = None,
    time_limit_s: float = 600.0,
    retryable: Callable[[BaseException], bool] | None = None,
) -> Callable[[Callable[..., Any]], JobType]:
    """Declare a job type; the decorated function becomes a Dramatiq actor named ``name`` on ``queue``.

    The actor re-validates its payload (the broker is a trust boundary: anyone who can publish can call
    it) and calls ``fn(**payload)``. Its return value is stored in the result backend.
    """

    def decorate(fn: Callable[..., Any]) -> JobType:
        jt = JobType(
            name=name, fn=fn, schema=schema, queue=queue, priority=priority, max_retries=max_retries,
            backoff=backoff or Backoff(), time_limit_s=time_limit_s, description=(fn.__doc__ or "").strip(),
            retryable=retryable or _default_retryable,
        )

        def run(payload: dict[str, Any]) -> Any:
            try:
                data = jt.loader.load(payload)
            except ValidationError as exc:
                raise PermanentJobError(f"invalid payload: {exc.messages}") from None
            return fn(**data)

        run.__name__ = fn.__name__
        jt.actor = dramatiq.actor(actor_name=name, queue_name=queue, time_limit=int(time_limit_s * 1000))(run)
        return registry.add(jt)

    return decorate
