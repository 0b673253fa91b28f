"""Conveyor's errors, rooted at one base.

    ServiceError
    ├── ConfigError
    ├── BackendUnavailable          (Redis or the broker cannot be reached: HTTP 503)
    ├── InvalidPayload              (HTTP 400, with field messages)
    └── JobError
        ├── JobNotFound             (HTTP 404)
        ├── UnknownJobType          (HTTP 404 at submit)
        ├── InvalidTransition       (HTTP 409)
        └── ResultNotReady          (HTTP 409)

Raised *inside* actors to steer retries (they are not service errors):

    PermanentJobError   the job failed and must not be retried (bad input, 4xx from a provider)
    RetryJob            retry this job, optionally after ``delay_s`` (a provider said "Retry-After")
    JobCancelled        the job was cancelled while running
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ServiceError",
    "ConfigError",
    "BackendUnavailable",
    "InvalidPayload",
    "JobError",
    "JobNotFound",
    "UnknownJobType",
    "InvalidTransition",
    "ResultNotReady",
    "PermanentJobError",
    "RetryJob",
    "JobCancelled",
]


class ServiceError(Exception):
    """Base of every error Conveyor raises on purpose. ``code`` is the machine-readable name."""

    code = "service_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ConfigError(ServiceError):
    """Raised when a setting is missing or malformed."""

    code = "config_error"


class BackendUnavailable(ServiceError):
    """Raised when Redis or the message broker cannot be reached in time."""

    code = "backend_unavailable"


class InvalidPayload(ServiceError):
    """Raised when a submission or its payload fails validation; ``details`` holds field messages."""

    code = "invalid_payload"


class JobError(ServiceError):
    """Base of errors about one job."""

    code = "job_error"


class JobNotFound(JobError):
    """Raised when no job with that id exists for the caller."""

    code = "job_not_found"


class UnknownJobType(JobError):
    """Raised when a submission names a job type that is not registered."""

    code = "unknown_job_type"


class InvalidTransition(JobError):
    """Raised when a job is asked to move to a state its current state does not allow."""

    code = "invalid_state"


class ResultNotReady(JobError):
    """Raised when a result is asked for before the job succeeded."""

    code = "result_not_ready"


class PermanentJobError(Exception):
    """Raised by an actor when retrying cannot help; the job fails at once and its message is dead-lettered."""


class RetryJob(Exception):
    """Raised by an actor to ask for a retry, after ``delay_s`` seconds if given (e.g. from Retry-After)."""

    def __init__(self, message: str = "retry requested", *, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class JobCancelled(BaseException):
    """Raised inside a running job when it was cancelled; a BaseException so ``except Exception`` misses it."""
