"""Diagnostic job types for smoke-testing a deployment: echo, sleep and flaky."""

from __future__ import annotations

import time
from typing import Any

from marshmallow import Schema, fields, validate

from service.context import current_job
from service.errors import PermanentJobError
from service.registry import Backoff, job_type


class EchoSchema(Schema):
    class Meta:
        unknown = "include"  # echo returns whatever it was given


class SleepSchema(Schema):
    seconds = fields.Float(required=True, validate=validate.Range(min=0, max=3600),
                           metadata={"description": "how long to sleep; progress is reported each second"})


class FlakySchema(Schema):
    fail_times = fields.Integer(required=True, validate=validate.Range(min=-1, max=100),
                                metadata={"description": "fail this many attempts, then succeed; -1 always fails"})
    permanent = fields.Boolean(load_default=False,
                               metadata={"description": "fail with a non-retryable error instead"})


class FlakyError(RuntimeError):
    """Raised by the flaky job type on purpose."""


@job_type("echo", schema=EchoSchema, queue="default", max_retries=0)
def echo(**payload: Any) -> dict[str, Any]:
    """Return the payload unchanged."""
    return payload


@job_type("sleep", schema=SleepSchema, queue="default", max_retries=0, time_limit_s=3700)
def sleep(seconds: float) -> dict[str, float]:
    """Sleep for `seconds`, reporting progress each second; cancellable while it runs."""
    job = current_job()
    started = time.monotonic()
    whole = int(seconds)
    for i in range(whole):
        job.progress(100 * i / max(seconds, 1e-9), f"slept {i}s of {seconds:g}s")
        time.sleep(1)
    time.sleep(max(0.0, seconds - whole))
    return {"slept_s": round(time.monotonic() - started, 3)}


@job_type("flaky", schema=FlakySchema, queue="default", max_retries=3,
          backoff=Backoff(kind="exponential", base_s=0.2, max_s=5, jitter=0.1))
def flaky(fail_times: int, permanent: bool = False) -> dict[str, int]:
    """Fail the first `fail_times` attempts (every attempt when -1), then succeed."""
    attempt = current_job().attempt
    if fail_times < 0 or attempt <= fail_times:
        if permanent:
            raise PermanentJobError(f"flaky failed permanently on attempt {attempt}")
        raise FlakyError(f"flaky failed on attempt {attempt} of {fail_times}")
    return {"attempts": attempt}
