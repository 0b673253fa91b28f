"""A job's Dramatiq message, and the job record rebuilt from one.

The message carries everything needed to rebuild the record (type, queue, payload, priority, tenant,
retry budget, generation), so that a worker that finds no record - Redis lost it - recreates it instead of
dropping the job.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from service.job import Job, now_ms
from service.state import JobState

__all__ = ["GEN_OPTION", "job_message", "job_from_message"]

#: Message option holding the record generation the message was published for.
GEN_OPTION = "conveyor_gen"
#: Message options that let a worker rebuild a lost record.
TENANT_OPTION = "conveyor_tenant"
RETRIES_OPTION = "conveyor_max_retries"
#: Message option carrying the job's submission options (``callback_url``), for final-state hooks.
OPTIONS_OPTION = "conveyor_options"


def job_message(job: Job) -> dramatiq.Message[Any]:
    """The Dramatiq message for the job's current generation. Its id is the job id."""
    return dramatiq.Message(
        queue_name=job.queue,
        actor_name=job.type,
        args=(job.payload,),
        kwargs={},
        options={GEN_OPTION: job.generation, "broker_priority": job.priority, TENANT_OPTION: job.tenant,
                 RETRIES_OPTION: job.max_retries, OPTIONS_OPTION: job.options},
        message_id=job.id,
        message_timestamp=now_ms(),
    )


def job_from_message(message: dramatiq.Message[Any]) -> Job:
    """A queued record for a message whose record is gone (marked ``recovered`` in its options)."""
    now = now_ms()
    payload = message.args[0] if message.args and isinstance(message.args[0], dict) else {}
    return Job(
        id=message.message_id, type=message.actor_name, queue=message.queue_name.removesuffix(".DQ"),
        tenant=str(message.options.get(TENANT_OPTION, "default")),
        priority=int(message.options.get("broker_priority") or 0), payload=payload,
        options={**message.options.get(OPTIONS_OPTION, {}), "recovered": True}, state=JobState.QUEUED,
        max_retries=int(message.options.get(RETRIES_OPTION, 0)), generation=int(message.options[GEN_OPTION]),
        created_at=int(message.message_timestamp or now), updated_at=now,
    )
