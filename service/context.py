"""What a running job can ask about itself: its id, its attempt, progress reporting and cancellation.

Actors call :func:`current_job` (``current_job().progress(40, "resized instagram")``). Progress writes are
one Lua call each; a progress call on a job that was cancelled raises :class:`JobCancelled`, which ends the
job as ``cancelled`` without retries.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.errors import JobCancelled

if TYPE_CHECKING:
    from service.store import JobStore

__all__ = ["JobContext", "current_job", "set_current", "clear_current"]

_local = threading.local()


@dataclass
class JobContext:
    """The job the current worker thread is running."""

    job_id: str
    generation: int
    attempt: int
    store: JobStore
    cancel_requested: bool = False

    def progress(self, percent: float, message: str = "") -> None:
        """Report progress (0-100) with a short message; raises JobCancelled if the job was cancelled."""
        result = self.store.progress(self.job_id, self.generation, int(percent), message)
        if self.cancel_requested or not result.ok and result.state is not None and result.state.is_final:
            raise JobCancelled(self.job_id)
        if result.cancel_requested:
            self.cancel_requested = True
            raise JobCancelled(self.job_id)

    def check_cancelled(self) -> None:
        """Raise JobCancelled if a cancel was requested (one Redis read)."""
        if self.cancel_requested or self.store.cancel_requested(self.job_id):
            self.cancel_requested = True
            raise JobCancelled(self.job_id)


class _NullContext(JobContext):
    """Used when an actor runs outside Conveyor (a plain ``.send()``): progress goes nowhere."""

    def __init__(self) -> None:
        pass

    def progress(self, percent: float, message: str = "") -> None:
        return None

    def check_cancelled(self) -> None:
        return None


def current_job() -> JobContext:
    """The context of the job running in this thread (a no-op context outside a tracked job)."""
    return getattr(_local, "ctx", None) or _NullContext()


def set_current(ctx: JobContext) -> None:
    _local.ctx = ctx


def clear_current() -> None:
    _local.ctx = None
