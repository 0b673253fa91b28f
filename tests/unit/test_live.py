"""Live status on the embedded runtime: a real WebSocket/SSE server (werkzeug, threaded) in this process,
the in-process worker, and the LiveHub reading fakeredis's stream."""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websocket
from werkzeug.serving import make_server

from service.live import CLOSE_SLOW_CONSUMER, LiveHub


@pytest.fixture(scope="module")
def server(rt) -> Iterator[tuple[str, Any]]:  # type: ignore[no-untyped-def]
    """The Flask app served on a free port; yields (base URL, app)."""
    from web import create_app

    app = create_app(runtime=rt)
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}", app
    srv.shutdown()
    app.extensions["conveyor.live"].stop()


@pytest.fixture
def base(server, worker) -> str:  # type: ignore[no-untyped-def]
    return server[0]  # type: ignore[no-any-return]


def submit(base: str, type_: str, payload: dict[str, Any]) -> str:
    r = requests.post(f"{base}/api/jobs", json={"type": type_, "payload": payload}, timeout=5)
    assert r.status_code == 202, r.text
    return r.json()["id"]  # type: ignore[no-any-return]


def connect(base: str, path: str = "/api/ws") -> websocket.WebSocket:
    return websocket.create_connection(base.replace("http", "ws", 1) + path, timeout=5)


def recv(ws: websocket.WebSocket) -> dict[str, Any]:
    return json.loads(ws.recv())  # type: ignore[no-any-return]


def send(ws: websocket.WebSocket, msg: dict[str, Any]) -> None:
    ws.send(json.dumps(msg))


def events_until_final(ws: websocket.WebSocket, job_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        msg = recv(ws)
        if msg["op"] == "event" and msg["job_id"] == job_id:
            out.append(msg)
            if msg["kind"] == "state" and msg["state"] in ("succeeded", "failed", "cancelled"):
                return out


def stored_events(base: str, job_id: str) -> list[dict[str, Any]]:
    return requests.get(f"{base}/api/jobs/{job_id}/events", timeout=5).json()["events"]  # type: ignore[no-any-return]


def wait_final(base: str, job_id: str) -> None:
    deadline = time.monotonic() + 10
    while requests.get(f"{base}/api/jobs/{job_id}", timeout=5).json()["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.05)


def test_a_job_subscriber_gets_the_snapshot_then_every_event_in_order(base):
    job_id = submit(base, "sleep", {"seconds": 1.2})
    ws = connect(base, f"/api/jobs/{job_id}/ws?since=0")
    snapshot = recv(ws)
    assert snapshot["op"] == "snapshot" and snapshot["job"]["id"] == job_id and snapshot["gap"] is False
    got = events_until_final(ws, job_id)
    assert got[-1]["state"] == "succeeded"
    assert [e["event_id"] for e in got] == [e["event_id"] for e in stored_events(base, job_id)]
    states = [e["state"] for e in got if e["kind"] == "state"]
    assert states == ["queued", "running", "succeeded"]
    assert any(e["kind"] == "progress" for e in got)
    # The socket stays usable after the final state.
    send(ws, {"action": "ping"})
    assert recv(ws) == {"op": "pong"}
    ws.close()


def test_a_jobs_channel_subscriber_sees_a_job_from_its_first_event(base):
    ws = connect(base)
    send(ws, {"action": "subscribe", "channel": "jobs"})
    assert recv(ws)["op"] == "subscribed"
    job_id = submit(base, "echo", {"x": 1})
    got = events_until_final(ws, job_id)
    assert [e["state"] for e in got] == ["queued", "running", "succeeded"]
    assert got == sorted(got, key=lambda e: tuple(map(int, e["event_id"].split("-"))))
    ws.close()


def test_subscribing_with_since_replays_exactly_the_missed_events(base):
    job_id = submit(base, "echo", {"x": 2})
    wait_final(base, job_id)
    stored = stored_events(base, job_id)
    ws = connect(base)
    send(ws, {"action": "subscribe", "job_id": job_id, "since": stored[0]["event_id"]})
    snapshot = recv(ws)
    assert snapshot["op"] == "snapshot" and snapshot["gap"] is False
    assert snapshot["job"]["state"] == "succeeded" and snapshot["event_id"] == stored[-1]["event_id"]
    replayed = [recv(ws) for _ in stored[1:]]
    assert [e["event_id"] for e in replayed] == [e["event_id"] for e in stored[1:]]
    send(ws, {"action": "ping"})
    assert recv(ws) == {"op": "pong"}  # nothing else was queued: no duplicates
    ws.close()


def test_a_since_older_than_what_is_retained_gets_the_snapshot_with_a_gap_marker(base, rt):
    job_id = submit(base, "echo", {"x": 3})
    wait_final(base, job_id)
    stored = stored_events(base, job_id)
    rt.redis.xtrim(rt.store.keys.job_events(job_id), maxlen=1, approximate=False)
    ws = connect(base, f"/api/jobs/{job_id}/ws?since={stored[0]['event_id']}")
    snapshot = recv(ws)
    assert snapshot["op"] == "snapshot" and snapshot["gap"] is True
    assert recv(ws)["event_id"] == stored[-1]["event_id"]
    ws.close()


def test_bad_messages_get_an_error_message_and_the_socket_stays_usable(base):
    ws = connect(base)
    for bad, code in [("not json", "invalid_payload"), ("[1, 2]", "invalid_payload"),
                      ('{"action": "dance"}', "invalid_payload"),
                      ('{"action": "subscribe", "channel": "nope"}', "invalid_payload"),
                      ('{"action": "subscribe", "job_id": "nope"}', "job_not_found"),
                      ('{"action": "subscribe", "job_id": {"a": 1}}', "invalid_payload"),
                      ('{"action": "subscribe", "job_id": "x", "since": "yesterday"}', "invalid_payload")]:
        ws.send(bad)
        msg = recv(ws)
        assert msg["op"] == "error" and msg["error"] == code, (bad, msg)
    send(ws, {"action": "ping"})
    assert recv(ws) == {"op": "pong"}
    ws.close()


def test_an_unknown_job_in_the_url_is_refused_with_404_before_the_upgrade(base):
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        connect(base, "/api/jobs/no-such-job/ws")
    assert exc.value.status_code == 404
    assert requests.get(f"{base}/api/sse/jobs/no-such-job", timeout=5).status_code == 404


def test_stats_subscribers_get_the_counts_now_and_again_when_they_change(base):
    ws = connect(base)
    send(ws, {"action": "subscribe", "channel": "stats"})
    assert recv(ws)["op"] == "subscribed"
    first = recv(ws)
    assert first["op"] == "stats"
    job_id = submit(base, "echo", {"x": 4})
    wait_final(base, job_id)
    deadline = time.monotonic() + 5
    while True:
        msg = recv(ws)
        if msg["op"] == "stats" and msg["states"]["succeeded"] > first["states"]["succeeded"]:
            break
        assert time.monotonic() < deadline
    ws.close()


def test_sse_resumes_after_the_last_event_id(base):
    job_id = submit(base, "echo", {"x": 5})
    wait_final(base, job_id)
    stored = stored_events(base, job_id)
    r = requests.get(f"{base}/api/sse/jobs/{job_id}", headers={"Last-Event-ID": stored[0]["event_id"]},
                     stream=True, timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    ids, datas = [], []
    lines = r.iter_lines(decode_unicode=True)
    while len(datas) < len(stored):  # the snapshot, then the events after the first
        line = next(lines)
        if line.startswith("id: "):
            ids.append(line[4:])
        elif line.startswith("data: "):
            datas.append(json.loads(line[6:]))
    r.close()
    assert datas[0]["op"] == "snapshot"
    assert ids == [e["event_id"] for e in stored[1:]]
    assert [d["event_id"] for d in datas[1:]] == ids


def test_a_client_that_does_not_keep_up_is_closed_with_code_4001(server, base):
    hub: LiveHub = server[1].extensions["conveyor.live"]
    hub.buffer_events = 8
    try:
        ws = connect(base)
        send(ws, {"action": "subscribe", "channel": "jobs"})
        assert recv(ws)["op"] == "subscribed"
        fields = {"job": "flood", "tenant": "default", "type": "echo", "queue": "default", "kind": "progress",
                  "state": "running", "percent": "1", "message": "x" * 200, "attempt": "1", "at": "0"}
        # The test thread floods the hub far faster than one handler thread can write to the socket.
        for i in range(1, 20_001):
            hub.dispatch(f"{i}-0", fields)
        code = None
        while code is None:
            frame = ws.recv_data_frame(True)[1]
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                code = struct.unpack("!H", frame.data[:2])[0]
        assert code == CLOSE_SLOW_CONSUMER
    finally:
        hub.buffer_events = server[1].extensions["conveyor"].settings.live_buffer_events
    # Nobody else was disturbed: a new client is served.
    ws = connect(base)
    send(ws, {"action": "ping"})
    assert recv(ws) == {"op": "pong"}
    ws.close()


def test_a_feed_that_overflows_is_dropped_and_forgotten_by_the_hub(rt, clean):
    hub = LiveHub(rt.store, rt.redis, buffer_events=3)
    hub.start()
    try:
        feed = hub.open("default")
        feed.subscribe_channel("jobs")
        fields = {"job": "j", "tenant": "default", "kind": "state", "state": "queued"}
        for i in range(1, 4):
            hub.dispatch(f"{10**13 + i}-0", fields)
        assert feed.dropped is None
        hub.dispatch(f"{10**13 + 4}-0", fields)
        assert feed.dropped == CLOSE_SLOW_CONSUMER and hub.feed_count == 0
        other = hub.open("default")
        other.subscribe_channel("jobs")
        hub.dispatch(f"{10**13 + 5}-0", {**fields, "tenant": "someone-else"})
        assert other.drain() == []  # another tenant's events are not routed
    finally:
        hub.stop()
