"""The job state machine: the states and the one table of legal transitions.

Nothing else decides whether a job may move: the store passes ``allowed_sources(target)`` to its Lua
compare-and-set, so a late or duplicate delivery can never move a job backwards or out of a final state.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["JobState", "TRANSITIONS", "FINAL_STATES", "ACTIVE_STATES", "allowed_sources", "Priority"]


class JobState(str, Enum):
    """Where a job is in its life. Values are what the API and the event stream show."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


#: Every legal move. RUNNING -> RUNNING is the redelivery of a job whose worker died mid-run.
#: FAILED/CANCELLED -> QUEUED (or SCHEDULED) is a retry/re-drive: a new run of the same job id.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.SCHEDULED: frozenset({JobState.QUEUED, JobState.CANCELLED}),
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.RUNNING, JobState.SUCCEEDED, JobState.RETRYING, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.RETRYING: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED, JobState.SCHEDULED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED, JobState.SCHEDULED}),
}

#: States a job does not leave by itself.
FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
#: States in which a job still holds a place in a queue, the schedule or a worker.
ACTIVE_STATES = frozenset(set(JobState) - FINAL_STATES)


def allowed_sources(target: JobState) -> frozenset[JobState]:
    """The states from which ``target`` may be reached."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


class Priority:
    """Named priorities and their AMQP message priority (higher runs first)."""

    #: Name -> AMQP priority. Numbers 0-9 are accepted as they are.
    NAMES: dict[str, int] = {"low": 2, "normal": 5, "high": 8}
    DEFAULT = "normal"

    @classmethod
    def parse(cls, value: object) -> int:
        """Return the AMQP priority for ``value`` ("high", "normal", "low" or 0-9). Raises ValueError."""
        if isinstance(value, bool):
            raise ValueError("priority must be high, normal, low or 0-9")
        if isinstance(value, int) and 0 <= value <= 9:
            return value
        if isinstance(value, str) and value.lower() in cls.NAMES:
            return cls.NAMES[value.lower()]
        if isinstance(value, str) and value.isdigit() and 0 <= int(value) <= 9:
            return int(value)
        raise ValueError("priority must be high, normal, low or 0-9")
