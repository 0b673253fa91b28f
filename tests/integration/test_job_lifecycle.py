"""Jobs through real RabbitMQ and Redis with real `dramatiq actors` workers and a real `conveyor api`."""

from __future__ import annotations

import time

import requests

from tests.support.procs import free_port, start_api, wait_for, wait_state


def submit(base: str, body: dict) -> dict:
    r = requests.post(f"{base}/api/jobs", json=body, timeout=10)
    assert r.status_code == 202, r.text
    return r.json()


def test_a_submitted_echo_job_succeeds_and_its_result_can_be_read(api, start_workers):
    start_workers()
    job = submit(api, {"type": "echo", "payload": {"hello": "world", "n": 3}})
    assert job["state"] == "queued"
    done = wait_state(api, job["id"], "succeeded")
    assert done["attempts"] == 1
    r = requests.get(f"{api}/api/jobs/{job['id']}/result", timeout=5)
    assert r.status_code == 200
    assert r.json()["result"] == {"hello": "world", "n": 3}


def events_of(env, job_id: str) -> list[dict]:
    return [e.fields for e in env.store().job_events(job_id)]


def test_a_flaky_job_is_retried_with_its_attempts_counted_and_then_succeeds(api, env, start_workers):
    start_workers()
    job = submit(api, {"type": "flaky", "payload": {"fail_times": 2}})
    done = wait_state(api, job["id"], "succeeded")
    assert done["attempts"] == 3 and done["retries"] == 2
    assert [e["state"] for e in events_of(env, job["id"])] == [
        "queued", "running", "retrying", "running", "retrying", "running", "succeeded"]
    assert env.queue_messages("default.DQ") == 0  # retries wait in Redis, not in the delay queue


def test_an_always_failing_job_ends_failed_with_its_message_in_the_dead_letter_queue(api, env, start_workers):
    start_workers()
    job = submit(api, {"type": "flaky", "payload": {"fail_times": -1}, "max_retries": 2})
    done = wait_state(api, job["id"], "failed")
    assert done["attempts"] == 3
    assert done["error"]["type"] == "FlakyError" and "attempt 3" in done["error"]["message"]
    # The dead letter is there for operators: read it back through the management API without consuming it.
    dead = env.peek("default.XQ")
    assert any(job["id"] in m["payload"] for m in dead), dead


def test_a_cancelled_queued_job_never_runs(api, env, start_workers):
    job = submit(api, {"type": "echo", "payload": {"never": True}})
    r = requests.delete(f"{api}/api/jobs/{job['id']}", timeout=5)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    start_workers()
    wait_for(lambda: env.queue_messages("default") == 0, what="the queue to drain")
    rec = requests.get(f"{api}/api/jobs/{job['id']}", timeout=5).json()
    assert rec["state"] == "cancelled" and rec["attempts"] == 0 and rec["started_at"] is None
    assert [e["state"] for e in events_of(env, job["id"])] == ["queued", "cancelled"]


def test_a_redelivered_message_of_a_finished_job_changes_nothing(api, env, start_workers):
    import pika

    from service.message import job_message

    start_workers()
    job = submit(api, {"type": "echo", "payload": {"once": 1}})
    wait_state(api, job["id"], "succeeded")
    before = requests.get(f"{api}/api/jobs/{job['id']}", timeout=5).json()
    # The same message again, as a lost confirm's re-publish or a redelivery would bring it.
    message = job_message(env.store().get(job["id"]))
    conn = pika.BlockingConnection(pika.URLParameters(env.broker_url))
    conn.channel().basic_publish("", "default", message.encode(),
                                 pika.BasicProperties(delivery_mode=2, priority=5))
    conn.close()
    wait_for(lambda: env.queue_messages("default") == 0, what="the duplicate to be consumed")
    time.sleep(0.3)
    after = requests.get(f"{api}/api/jobs/{job['id']}", timeout=5).json()
    assert after == before
    assert len(events_of(env, job["id"])) == 3
    # ... and the skipped duplicate did not overwrite the stored result (Dramatiq stores None for skips).
    assert requests.get(f"{api}/api/jobs/{job['id']}/result", timeout=5).json()["result"] == {"once": 1}


def test_high_priority_jobs_overtake_a_backlog_of_low_priority_ones(api, env, start_workers):
    # Given a stopped worker and a backlog: 50 low, then 5 high.
    r = requests.post(f"{api}/api/jobs/bulk", timeout=30,
                      json={"jobs": [{"type": "echo", "payload": {"i": i}, "priority": "low"} for i in range(50)]})
    assert r.status_code == 202
    high = requests.post(f"{api}/api/jobs/bulk", timeout=30,
                         json={"jobs": [{"type": "echo", "payload": {"h": i}, "priority": "high"} for i in range(5)]})
    high_ids = {j["id"] for j in high.json()["jobs"]}
    # When one worker thread starts,
    start_workers(threads=1)
    all_ids = high_ids | {j["id"] for j in r.json()["jobs"]}
    store = env.store()
    wait_for(lambda: all(store.get(i).state.value == "succeeded" for i in all_ids), timeout=60, what="all 55 done")
    # Then the five high ones ran first.
    started = [f[b"job"].decode() for _, f in store.redis.xrange(store.keys.events)
               if f[b"state"] == b"running" and f[b"job"].decode() in all_ids]
    assert set(started[:5]) == high_ids, started[:8]


def test_the_queues_carry_max_priority_and_dead_letter_wiring(api, env):
    submit(api, {"type": "echo", "payload": {}})
    main = env.queue("default")
    assert main["durable"] is True
    assert main["arguments"]["x-max-priority"] == 9
    assert main["arguments"]["x-dead-letter-exchange"] == ""
    assert main["arguments"]["x-dead-letter-routing-key"] == "default.XQ"
    assert env.queue("default.XQ")["durable"] is True
    assert env.queue("default.DQ")["arguments"]["x-dead-letter-routing-key"] == "default.XQ"


def test_a_job_whose_worker_is_killed_mid_run_is_redelivered_and_finishes(api, env, start_workers):
    worker = start_workers(threads=1)
    job = submit(api, {"type": "sleep", "payload": {"seconds": 2}})
    wait_state(api, job["id"], "running")
    worker.kill()  # SIGKILL to the whole process group: no ack, no goodbye
    start_workers(threads=1)
    done = wait_state(api, job["id"], "succeeded", timeout=30)
    assert done["attempts"] == 2
    assert env.store().get(job["id"]).crash_redeliveries == 1
    assert env.queue_messages("default.XQ") >= 0 and env.queue_messages("default") == 0


def test_submitting_while_the_broker_is_down_is_a_503_that_leaves_nothing(env, tmp_path):
    proc, base = start_api(env, tmp_path, CONVEYOR_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")
    try:
        t0 = time.monotonic()
        r = requests.post(f"{base}/api/jobs", json={"type": "echo", "payload": {"lost": True}}, timeout=30)
        assert r.status_code == 503 and r.json()["error"] == "backend_unavailable", r.text
        assert time.monotonic() - t0 < 10
        assert "guest" not in r.text  # no credentials in errors
        assert not any(j.payload == {"lost": True} for j in env.store().list_jobs("default", limit=500)[0])
        health = requests.get(f"{base}/health", timeout=10)
        assert health.status_code == 503 and "broker" in health.json()["down"]
    finally:
        proc.stop()


def test_the_api_answers_503_not_500_while_redis_is_down(env, tmp_path):
    proc, base = start_api(env, tmp_path, CONVEYOR_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    try:
        r = requests.post(f"{base}/api/jobs", json={"type": "echo", "payload": {}}, timeout=30)
        assert r.status_code == 503 and r.json()["details"]["backend"] == "redis"
        assert requests.get(f"{base}/api/jobs/x", timeout=30).status_code == 503
        health = requests.get(f"{base}/health", timeout=30)
        assert health.status_code == 503 and "redis" in health.json()["down"]
    finally:
        proc.stop()


def test_a_job_that_keeps_killing_its_worker_is_failed_instead_of_looping(env, tmp_path):
    from tests.support.procs import Proc, start_worker

    modules = {"CONVEYOR_JOB_MODULES": "actors,tests.support.crash_actors", "CONVEYOR_MAX_CRASH_REDELIVERIES": "2"}
    api_proc, base = start_api(env, tmp_path, **modules)
    workers: list[Proc] = []
    try:
        job = submit(base, {"type": "test.crash"})
        # Each delivery kills the worker; a supervisor (here: this loop) starts a new one.
        for _ in range(6):
            w = start_worker(env, tmp_path, threads=1, wait=False, modules=("tests.support.crash_actors",), **modules)
            workers.append(w)
            wait_for(lambda w=w: w.popen.poll() is not None
                     or env.store().get(job["id"]).state.value == "failed", timeout=30, what="a crash")
            if env.store().get(job["id"]).state.value == "failed":
                break
        done = env.store().get(job["id"])
        assert done.state.value == "failed" and done.error_type == "WorkerCrashed"
        assert done.attempts == 3  # the first run and 2 redeliveries, then no more
        wait_for(lambda: any(job["id"] in m["payload"] for m in env.peek("default.XQ")), what="dead letter")
    finally:
        for w in workers:
            w.stop()
        api_proc.stop()
