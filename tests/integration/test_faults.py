"""Faults on private server instances: what is answered 202 is never lost across a RabbitMQ kill -9 and
restart, or a Redis kill -9 and restart (with AOF), and outages answer 503 rather than 202 or 500."""

from __future__ import annotations

import time

import requests

from tests.support.procs import create_env, destroy_env, start_api, start_worker, wait_for
from tests.support.servers import PrivateRabbit, PrivateRedis


def submit_many(base: str, bodies: list[dict]) -> tuple[list[str], list[int]]:
    accepted, refused = [], []
    for body in bodies:
        try:
            r = requests.post(f"{base}/api/jobs", json=body, timeout=30)
        except requests.RequestException:
            refused.append(-1)
            continue
        if r.status_code == 202:
            accepted.append(r.json()["id"])
        else:
            assert r.status_code == 503, r.text  # never a 500
            refused.append(r.status_code)
    return accepted, refused


def all_succeeded(store, ids: list[str]) -> bool:
    return all((j := store.get(i)) is not None and j.state.value == "succeeded" for i in ids)


def test_every_accepted_job_survives_a_rabbitmq_kill_and_restart(tmp_path):
    rabbit = PrivateRabbit()
    rabbit.start()
    env = create_env()
    env.extra["CONVEYOR_BROKER_URL"] = rabbit.url
    procs = []
    try:
        api, base = start_api(env, tmp_path)
        procs.append(api)
        procs.append(start_worker(env, tmp_path, threads=2))
        # Given a backlog of accepted jobs, some delayed and one that needs a retry,
        bodies = [{"type": "sleep", "payload": {"seconds": 0.2}} for _ in range(40)]
        bodies += [{"type": "echo", "payload": {"d": i}, "delay_ms": 2500} for i in range(3)]
        bodies += [{"type": "flaky", "payload": {"fail_times": 1}}]
        accepted, refused = submit_many(base, bodies)
        assert len(accepted) == len(bodies) and not refused
        store = env.store()
        assert sum(store.get(i).state.value == "queued" for i in accepted) >= 10  # a real backlog
        # When the broker is killed,
        rabbit.kill()
        during, refused = submit_many(base, [{"type": "echo", "payload": {"during": True}}] * 3)
        # Then submissions are refused with 503, not accepted into the void,
        assert during == [] and refused == [503, 503, 503]
        # And after it restarts every accepted job finishes.
        rabbit.start()
        after, _ = submit_many(base, [{"type": "echo", "payload": {"after": True}}])
        assert len(after) == 1
        wait_for(lambda: all_succeeded(store, accepted + after), timeout=90, interval=0.5,
                 what="every accepted job to succeed after the broker restart")
    finally:
        for p in procs:
            p.stop()
        rabbit.stop()
        destroy_env(env)


def test_every_accepted_job_survives_a_redis_kill_and_restart(tmp_path):
    redis_server = PrivateRedis(tmp_path)
    redis_server.start()
    env = create_env()
    env.redis_url = redis_server.url
    procs = []
    try:
        api, base = start_api(env, tmp_path)
        procs.append(api)
        procs.append(start_worker(env, tmp_path, threads=2))
        bodies = [{"type": "sleep", "payload": {"seconds": 0.1}} for _ in range(20)]
        bodies += [{"type": "echo", "payload": {"d": i}, "delay_ms": 1500} for i in range(3)]
        bodies += [{"type": "flaky", "payload": {"fail_times": 1}}]
        accepted, refused = submit_many(base, bodies)
        assert len(accepted) == len(bodies) and not refused
        assert sum(env.store().get(i).state.value == "queued" for i in accepted) >= 5  # a real backlog
        redis_server.kill()
        during, refused = submit_many(base, [{"type": "echo", "payload": {"during": True}}] * 3)
        assert during == [] and refused == [503, 503, 503]
        assert requests.get(f"{base}/api/jobs/{accepted[0]}", timeout=30).status_code == 503
        time.sleep(2)
        redis_server.start()
        store = env.store()
        wait_for(lambda: all_succeeded(store, accepted), timeout=90, interval=0.5,
                 what="every accepted job to succeed after the Redis restart")
        after, _ = submit_many(base, [{"type": "echo", "payload": {"after": True}}])
        assert len(after) == 1
    finally:
        for p in procs:
            p.stop()
        destroy_env(env)
        redis_server.stop()
