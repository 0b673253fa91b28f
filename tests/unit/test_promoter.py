"""The promoter: due jobs are published once, and a failed publish is tried again rather than dropped."""

from __future__ import annotations

from service.jobs import Submission
from service.promoter import promote_due
from service.state import JobState


def test_a_due_scheduled_job_is_queued_and_published_once(clean):
    rt = clean
    job, _ = rt.jobs.submit(Submission("echo", {}, delay_ms=1))
    rt.redis.zadd(rt.store.keys.schedule, {job.id: 0})
    assert promote_due(rt.store, rt.broker) == 1
    assert promote_due(rt.store, rt.broker) == 0
    assert rt.store.get(job.id).state is JobState.QUEUED
    assert rt.broker.queues["default"].qsize() == 1


def test_a_publish_that_fails_puts_the_job_back_in_the_schedule(clean, monkeypatch):
    from dramatiq.errors import BrokerConnectionError

    rt = clean
    job, _ = rt.jobs.submit(Submission("echo", {}, delay_ms=1))
    rt.redis.zadd(rt.store.keys.schedule, {job.id: 0})

    def down(message, *, delay=None):
        raise BrokerConnectionError("down")

    monkeypatch.setattr(rt.broker, "enqueue", down)
    assert promote_due(rt.store, rt.broker) == 0
    assert rt.redis.zscore(rt.store.keys.schedule, job.id) is not None
    assert rt.redis.zcard(rt.store.keys.claimed) == 0
    monkeypatch.undo()
    rt.redis.zadd(rt.store.keys.schedule, {job.id: 0})
    assert promote_due(rt.store, rt.broker) == 1
    assert rt.broker.queues["default"].qsize() == 1


def test_a_cancelled_job_in_the_schedule_is_dropped_not_published(clean):
    rt = clean
    job, _ = rt.jobs.submit(Submission("echo", {}, delay_ms=60_000))
    rt.redis.zadd(rt.store.keys.schedule, {job.id: 0})
    rt.store.transition(job.id, JobState.CANCELLED)  # without unscheduling, as a race would leave it
    assert promote_due(rt.store, rt.broker) == 0
    assert rt.redis.zcard(rt.store.keys.schedule) == 0 and rt.redis.zcard(rt.store.keys.claimed) == 0
