"""A job type that kills the worker process running it, for the poison-pill test. Loaded only by tests
(`dramatiq actors tests.support.crash_actors`, CONVEYOR_JOB_MODULES=actors,tests.support.crash_actors)."""

from __future__ import annotations

import os
import signal

from marshmallow import Schema

from service.registry import job_type


@job_type("test.crash", schema=Schema, max_retries=5)
def crash() -> None:
    """Kill this worker process outright, as an OOM kill or a segfault would."""
    os.kill(os.getpid(), signal.SIGKILL)
