"""Live status through real processes: `conveyor api` (gunicorn, 2 workers) and `dramatiq actors` on real
RabbitMQ and Redis, watched over WebSocket and SSE."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websocket

from tests.support.procs import start_api, start_worker

FINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def live(env, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """An api with two gunicorn workers (so clients land on different hubs) and one worker process."""
    tmp = tmp_path_factory.mktemp("live")
    api, base = start_api(env, tmp, workers=2, threads=16)
    worker = start_worker(env, tmp, threads=4)
    yield base
    worker.stop()
    api.stop()


def submit(base: str, type_: str, payload: dict[str, Any]) -> str:
    r = requests.post(f"{base}/api/jobs", json={"type": type_, "payload": payload}, timeout=10)
    assert r.status_code == 202, r.text
    return r.json()["id"]  # type: ignore[no-any-return]


def connect(base: str, path: str = "/api/ws", timeout: float = 10) -> websocket.WebSocket:
    return websocket.create_connection(base.replace("http", "ws", 1) + path, timeout=timeout)


def recv(ws: websocket.WebSocket) -> dict[str, Any]:
    return json.loads(ws.recv())  # type: ignore[no-any-return]


def stored_ids(base: str, job_id: str) -> list[str]:
    return [e["event_id"] for e in requests.get(f"{base}/api/jobs/{job_id}/events", timeout=5).json()["events"]]


def follow(ws: websocket.WebSocket, job_id: str) -> list[dict[str, Any]]:
    """Events of ``job_id`` until its final state."""
    out: list[dict[str, Any]] = []
    while not out or not (out[-1]["kind"] == "state" and out[-1]["state"] in FINAL):
        msg = recv(ws)
        if msg["op"] == "event" and msg["job_id"] == job_id:
            out.append(msg)
    return out


def key(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def submit_watching_the_jobs_channel(live, job_type: str, payload: dict) -> tuple[str, list[dict]]:
    """Subscribe to the jobs channel first, then submit; returns the job id and its events to the end."""
    ws = connect(live)
    ws.send(json.dumps({"action": "subscribe", "channel": "jobs"}))
    assert recv(ws)["op"] == "subscribed"
    job_id = submit(live, job_type, payload)
    got = follow(ws, job_id)
    ws.close()
    return job_id, got


def test_a_client_subscribed_before_submit_sees_queued_running_progress_and_succeeded_in_order(live):
    job_id, got = submit_watching_the_jobs_channel(live, "sleep", {"seconds": 2.5})
    assert [e["state"] for e in got if e["kind"] == "state"] == ["queued", "running", "succeeded"]
    progress = [e["progress"]["percent"] for e in got if e["kind"] == "progress"]
    assert len(progress) >= 2 and progress == sorted(progress)
    assert [e["event_id"] for e in got] == stored_ids(live, job_id)
    assert [key(e["event_id"]) for e in got] == sorted(key(e["event_id"]) for e in got)


def test_the_retrying_events_of_a_flaky_job_arrive_with_their_error(live):
    job_id, got = submit_watching_the_jobs_channel(live, "flaky", {"fail_times": 2})
    retrying = [e for e in got if e["state"] == "retrying"]
    assert len(retrying) == 2
    assert all(e["error"]["type"] == "FlakyError" for e in retrying)
    assert [e["attempt"] for e in retrying] == [1, 2]
    assert got[-1]["state"] == "succeeded" and got[-1]["attempt"] == 3
    assert [e["event_id"] for e in got] == stored_ids(live, job_id)


def test_a_client_dropping_its_connection_many_times_mid_job_misses_nothing_and_gets_nothing_twice(live):
    # Given a job of about seven seconds that reports progress each second
    job_id = submit(live, "sleep", {"seconds": 7})
    rng = random.Random(7)
    received: list[str] = []
    connections = 0
    final = False
    # When the client reconnects with `since` over and over, reading a few messages each time
    while not final:
        since = received[-1] if received else "0"
        ws = connect(live, f"/api/jobs/{job_id}/ws?since={since}")
        connections += 1
        snapshot = recv(ws)
        assert snapshot["op"] == "snapshot" and snapshot["gap"] is False
        ws.settimeout(rng.uniform(0.05, 0.4))
        try:
            for _ in range(rng.randint(0, 2)):
                msg = recv(ws)
                assert msg["op"] == "event"
                received.append(msg["event_id"])
                final = msg["kind"] == "state" and msg["state"] in FINAL
                if final:
                    break
        except websocket.WebSocketTimeoutException:
            pass
        if rng.random() < 0.5:
            ws.shutdown()  # abrupt: no close handshake
        else:
            ws.close()
    # Then it received every event exactly once, in order
    stored = stored_ids(live, job_id)
    duplicates = len(received) - len(set(received))
    gaps = len(set(stored) - set(received))
    assert (duplicates, gaps) == (0, 0)
    assert received == stored
    assert connections >= 20, connections


def test_sse_resumes_with_last_event_id_without_gaps_or_duplicates(live):
    job_id = submit(live, "sleep", {"seconds": 3})
    received: list[str] = []
    states: list[str] = []

    def read(headers: dict[str, str], stop_after: int | None) -> None:
        r = requests.get(f"{live}/api/sse/jobs/{job_id}", headers=headers, stream=True, timeout=10)
        assert r.status_code == 200
        event_id = None
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if data["op"] == "event":
                    assert data["event_id"] == event_id
                    received.append(event_id)
                    states.append(data["state"])
                    if data["kind"] == "state" and data["state"] in FINAL:
                        break
                    if stop_after is not None and len(received) >= stop_after:
                        break
        r.close()

    read({}, stop_after=2)  # no Last-Event-ID: snapshot, then live events only
    read({"Last-Event-ID": received[-1]}, stop_after=None)
    assert states[-1] == "succeeded"
    stored = stored_ids(live, job_id)
    assert len(received) == len(set(received))
    assert received == stored[stored.index(received[0]):]
