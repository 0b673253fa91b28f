"""The job record: how it is stored in a Redis hash and how the API shows it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service.state import JobState

__all__ = ["Job", "iso_ms", "now_ms"]


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch."""
    return int(datetime.now(UTC).timestamp() * 1000)


def iso_ms(ms: int | None) -> str | None:
    """An epoch-milliseconds timestamp as ISO 8601 UTC, or None."""
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: Fields stored as JSON text in the hash.
_JSON_FIELDS = ("payload", "options", "history")
#: Fields stored as integers.
_INT_FIELDS = (
    "priority", "progress", "attempts", "retries", "max_retries", "generation", "crash_redeliveries",
    "created_at", "scheduled_for", "started_at", "finished_at", "updated_at", "seq", "cancel_requested",
)


@dataclass
class Job:
    """One job. ``id`` is the Dramatiq message id; ``generation`` counts publishes of it (runs + retries)."""

    id: str
    type: str
    queue: str
    tenant: str = "default"
    priority: int = 5
    payload: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    state: JobState = JobState.QUEUED
    progress: int = 0
    progress_message: str = ""
    attempts: int = 0
    retries: int = 0
    max_retries: int = 0
    generation: int = 1
    crash_redeliveries: int = 0
    cancel_requested: int = 0
    error_type: str = ""
    error_message: str = ""
    error_traceback: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    created_at: int = 0
    scheduled_for: int = 0
    started_at: int = 0
    finished_at: int = 0
    updated_at: int = 0
    idempotency_key: str = ""
    trace_id: str = ""
    seq: int = 0

    def to_hash(self) -> dict[str, str]:
        """The record as Redis hash fields."""
        out: dict[str, str] = {}
        for key in self.__dataclass_fields__:  # not asdict(): its deep copy costs more than the Redis call
            value = getattr(self, key)
            if key in _JSON_FIELDS:
                out[key] = json.dumps(value, separators=(",", ":"))
            elif isinstance(value, JobState):
                out[key] = value.value
            else:
                out[key] = str(value)
        return out

    @classmethod
    def from_hash(cls, raw: dict[bytes | str, bytes | str]) -> Job:
        """Rebuild a job from its Redis hash."""
        data = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in raw.items()}
        kwargs: dict[str, Any] = {}
        known = cls.__dataclass_fields__
        for key, value in data.items():
            if key not in known:
                continue
            if key in _JSON_FIELDS:
                kwargs[key] = json.loads(value) if value else ({} if key != "history" else [])
            elif key in _INT_FIELDS:
                kwargs[key] = int(value or 0)
            elif key == "state":
                kwargs[key] = JobState(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @property
    def result_available(self) -> bool:
        return self.state is JobState.SUCCEEDED

    def to_api(self) -> dict[str, Any]:
        """The record as the HTTP API and the dashboard show it (no traceback: that is for operators)."""
        return {
            "id": self.id,
            "type": self.type,
            "queue": self.queue,
            "tenant": self.tenant,
            "priority": self.priority,
            "state": self.state.value,
            "payload": self.payload,
            "progress": {"percent": self.progress, "message": self.progress_message},
            "attempts": self.attempts,
            "retries": self.retries,
            "max_retries": self.max_retries,
            "cancel_requested": bool(self.cancel_requested),
            "error": (
                {"type": self.error_type, "message": self.error_message} if self.error_type else None
            ),
            "history": self.history,
            "created_at": iso_ms(self.created_at),
            "scheduled_for": iso_ms(self.scheduled_for),
            "started_at": iso_ms(self.started_at),
            "finished_at": iso_ms(self.finished_at),
            "updated_at": iso_ms(self.updated_at),
            "idempotency_key": self.idempotency_key or None,
            "trace_id": self.trace_id or None,
            "result_url": f"/api/jobs/{self.id}/result" if self.result_available else None,
        }
