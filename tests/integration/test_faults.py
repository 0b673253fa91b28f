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


def backlog(sleeps: int, seconds: float, delay_ms: int) -> list[dict]:
    """Accepted work of every kind that lives through an outage: queued, delayed and needing a retry."""
    bodies = [{"type": "sleep", "payload": {"seconds": seconds}} for _ in range(sleeps)]
    bodies += [{"type": "echo", "payload": {"d": i}, "delay_ms": delay_ms} for i in range(3)]
    return bodies + [{"type": "flaky", "payload": {"fail_times": 1}}]


def survive_outage(env, tmp_path, bodies: list[dict], min_queued: int, kill, restart, while_down=None) -> None:
    """Given a backlog of accepted jobs, when a server is killed, then submissions are 503 (never 202 into
    the void, never 500), and after it restarts every accepted job, and a new one, succeeds."""
    procs = []
    try:
        api, base = start_api(env, tmp_path)
        procs.append(api)
        procs.append(start_worker(env, tmp_path, threads=2))
        accepted, refused = submit_many(base, bodies)
        assert len(accepted) == len(bodies) and not refused
        store = env.store()
        assert sum(store.get(i).state.value == "queued" for i in accepted) >= min_queued  # a real backlog
        kill()
        during, refused = submit_many(base, [{"type": "echo", "payload": {"during": True}}] * 3)
        assert during == [] and refused == [503, 503, 503]
        if while_down:
            while_down(base, accepted)
        restart()
        wait_for(lambda: all_succeeded(store, accepted), timeout=90, interval=0.5,
                 what="every accepted job to succeed after the restart")
        after, _ = submit_many(base, [{"type": "echo", "payload": {"after": True}}])
        assert len(after) == 1
        wait_for(lambda: all_succeeded(store, after), timeout=30, what="a job submitted after the restart")
    finally:
        for p in procs:
            p.stop()


def test_every_accepted_job_survives_a_rabbitmq_kill_and_restart(tmp_path):
    rabbit = PrivateRabbit()
    rabbit.start()
    env = create_env()
    env.extra["CONVEYOR_BROKER_URL"] = rabbit.url
    try:
        survive_outage(env, tmp_path, backlog(40, 0.2, 2500), 10, rabbit.kill, rabbit.start)
    finally:
        rabbit.stop()
        destroy_env(env)


def test_every_accepted_job_survives_a_redis_kill_and_restart(tmp_path):
    redis_server = PrivateRedis(tmp_path)
    redis_server.start()
    env = create_env()
    env.redis_url = redis_server.url

    def reads_are_503(base: str, accepted: list[str]) -> None:
        assert requests.get(f"{base}/api/jobs/{accepted[0]}", timeout=30).status_code == 503
        time.sleep(2)

    try:
        survive_outage(env, tmp_path, backlog(20, 0.1, 1500), 5, redis_server.kill, redis_server.start,
                       while_down=reads_are_503)
    finally:
        destroy_env(env)
        redis_server.stop()
