"""The state table and the store's compare-and-set, on the embedded store."""

from __future__ import annotations

import pytest

from service.job import Job, now_ms
from service.state import FINAL_STATES, TRANSITIONS, JobState, Priority, allowed_sources


def make_job(rt, **kw) -> Job:
    job = Job(id=kw.pop("id", "job-1"), type="echo", queue="default", created_at=now_ms(), updated_at=now_ms(), **kw)
    rt.store.create(job)
    return job


def test_no_final_state_leads_anywhere_but_a_new_run():
    for state in FINAL_STATES:
        assert TRANSITIONS[state] <= {JobState.QUEUED, JobState.SCHEDULED}
    assert TRANSITIONS[JobState.SUCCEEDED] == frozenset()


def test_running_can_only_be_reached_from_queued_retrying_or_a_crashed_run():
    assert allowed_sources(JobState.RUNNING) == {JobState.QUEUED, JobState.RETRYING, JobState.RUNNING}


def test_named_and_numeric_priorities_map_to_amqp_priorities():
    assert Priority.parse("high") > Priority.parse("normal") > Priority.parse("low")
    assert Priority.parse(7) == 7
    for bad in (10, -1, "urgent", True, 3.5, None):
        with pytest.raises(ValueError):
            Priority.parse(bad)


def test_a_transition_updates_record_state_index_counts_and_both_event_streams(clean):
    rt = clean
    make_job(rt)
    res = rt.store.transition("job-1", JobState.RUNNING, set_fields={"started_at": 5}, incr={"attempts": 1})
    assert res.ok and res.previous is JobState.QUEUED and res.attempts == 1
    job = rt.store.get("job-1")
    assert job.state is JobState.RUNNING and job.attempts == 1 and job.started_at == 5
    assert rt.redis.zscore(rt.store.keys.index("default", "state", "running"), "job-1") is not None
    assert rt.redis.zscore(rt.store.keys.index("default", "state", "queued"), "job-1") is None
    assert rt.store.counts()["default"]["running"] == 1 and rt.store.counts()["default"]["queued"] == 0
    events = rt.store.job_events("job-1")
    assert [e.fields["state"] for e in events] == ["queued", "running"]
    assert [e.event_id for e in events] == [eid.decode() for eid, _ in rt.redis.xrange(rt.store.keys.events)]


def test_a_final_job_cannot_be_moved_back_by_a_late_delivery(clean):
    rt = clean
    make_job(rt)
    assert rt.store.transition("job-1", JobState.RUNNING).ok
    assert rt.store.transition("job-1", JobState.SUCCEEDED).ok
    late = rt.store.transition("job-1", JobState.RUNNING)
    assert not late.ok and late.reason == "state" and late.state is JobState.SUCCEEDED
    assert rt.store.get("job-1").state is JobState.SUCCEEDED
    assert len(rt.store.job_events("job-1")) == 3


def test_a_transition_for_an_old_generation_is_refused(clean):
    rt = clean
    make_job(rt, generation=2)
    res = rt.store.transition("job-1", JobState.RUNNING, generation=1)
    assert not res.ok and res.reason == "generation"
    assert rt.store.transition("job-1", JobState.RUNNING, generation=2).ok


def test_a_final_job_gets_a_ttl_and_a_redriven_one_loses_it(clean):
    rt = clean
    make_job(rt)
    rt.store.transition("job-1", JobState.CANCELLED)
    assert 0 < rt.redis.ttl(rt.store.keys.job("job-1")) <= rt.settings.job_ttl_s
    rt.store.transition("job-1", JobState.QUEUED)
    assert rt.redis.ttl(rt.store.keys.job("job-1")) == -1


def test_an_idempotency_key_returns_the_first_job(clean):
    rt = clean
    make_job(rt, id="a", idempotency_key="k1")
    job_id, created = rt.store.create(Job(id="b", type="echo", queue="default", idempotency_key="k1"))
    assert (job_id, created) == ("a", False)
    assert rt.store.get("b") is None


def test_listing_is_newest_first_filtered_and_paginated(clean):
    rt = clean
    for i in range(7):
        make_job(rt, id=f"j{i}")
    rt.store.transition("j3", JobState.CANCELLED)
    page, cursor = rt.store.list_jobs("default", limit=3)
    assert [j.id for j in page] == ["j6", "j5", "j4"]
    page2, cursor2 = rt.store.list_jobs("default", limit=3, cursor=cursor)
    assert [j.id for j in page2] == ["j3", "j2", "j1"]
    page3, cursor3 = rt.store.list_jobs("default", limit=3, cursor=cursor2)
    assert [j.id for j in page3] == ["j0"] and cursor3 is None
    cancelled, _ = rt.store.list_jobs("default", state="cancelled", type="echo")
    assert [j.id for j in cancelled] == ["j3"]
    assert rt.store.list_jobs("other-tenant")[0] == []


def test_claiming_due_entries_gives_each_entry_to_one_promoter(clean):
    rt = clean
    make_job(rt, id="s1", state=JobState.SCHEDULED)
    rt.redis.zadd(rt.store.keys.schedule, {"s1": now_ms() - 1, "s2": now_ms() + 60_000})
    assert rt.store.claim_due() == ["s1"]
    assert rt.store.claim_due() == []


def test_an_expired_claim_is_taken_over(clean):
    rt = clean
    rt.redis.zadd(rt.store.keys.schedule, {"s1": now_ms() - 1})
    assert rt.store.claim_due(lease_ms=-1) == ["s1"]
    assert rt.store.claim_due() == ["s1"]


def test_the_purge_drops_index_entries_and_counts_of_expired_jobs(clean):
    from service.maintenance import purge_expired

    rt = clean
    make_job(rt, id="old")
    make_job(rt, id="new")
    rt.store.transition("old", JobState.CANCELLED)
    rt.redis.delete(rt.store.keys.job("old"))  # as if its TTL ran out
    assert purge_expired(rt.store) == 1
    assert [j.id for j in rt.store.list_jobs("default")[0]] == ["new"]
    assert rt.store.counts()["default"]["cancelled"] == 0
    assert rt.redis.zcard(rt.store.keys.index("default", "type", "echo")) == 1
