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

from service.feed import CLOSE_SLOW_CONSUMER
from service.live import LiveHub


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


# -- events written by the hub's thread to caught-up clients -----------------------------------------


def _event(i: int, tenant: str = "default") -> tuple[str, dict[str, str]]:
    return f"{10**13 + i}-0", {"job": f"j{i % 3}", "tenant": tenant, "type": "echo", "queue": "default",
                               "kind": "progress", "state": "running", "percent": "1", "message": "m",
                               "attempt": "1", "at": "0"}


def _ids(texts: list[str]) -> list[int]:
    return [int(json.loads(t)["event_id"].split("-")[0]) - 10**13 for t in texts]


def test_an_event_for_a_caught_up_feed_is_written_by_the_hub_without_waking_the_clients_thread(rt, clean):
    hub = LiveHub(rt.store, rt.redis)
    writes: list[tuple[str, ...]] = []
    feed = hub.open("default", direct=lambda texts: writes.append(texts) is None)
    feed.subscribe_channel("jobs")
    for i in range(1, 4):
        hub.dispatch(*_event(i))
    hub.dispatch(*_event(4, tenant="someone-else"))
    # Events read from the stream together reach the client together, in one write.
    hub.dispatch_many([_event(5), _event(6, tenant="someone-else"), _event(7)])
    assert [_ids(list(w)) for w in writes] == [[1], [2], [3], [5, 7]] and feed.sent_direct == 5
    assert not feed.wake.is_set() and feed.drain() == []
    hub.stop()


def test_events_after_one_that_would_block_wait_in_the_buffer_behind_it_and_nothing_is_sent_twice(rt, clean):
    hub = LiveHub(rt.store, rt.redis)
    written: list[str] = []
    room = [2]

    def direct(texts: tuple[str, ...]) -> bool:  # a socket with room for ``room[0]`` more frames
        if room[0] < len(texts):
            return False
        room[0] -= len(texts)
        written.extend(texts)
        return True

    feed = hub.open("default", direct=direct)
    feed.subscribe_channel("jobs")
    for i in range(1, 4):  # 1 and 2 written, 3 would block
        hub.dispatch(*_event(i))
    room[0] = 100  # room again, but 3 is still buffered: 4 and 5 must queue behind it
    for i in range(4, 6):
        hub.dispatch(*_event(i))
    assert _ids(written) == [1, 2] and feed.wake.is_set()
    with feed.lock:  # what the client's thread does when woken
        drained = [f.data for f in feed.drain()]
    assert _ids(drained) == [3, 4, 5]
    hub.dispatch(*_event(6))  # caught up again: written directly
    # A late duplicate (e.g. an event already covered by a replay) is skipped on both paths.
    hub.dispatch(*_event(6))
    assert _ids(written) == [1, 2, 6] and feed.drain() == []
    hub.stop()


def test_while_the_clients_thread_holds_its_feed_the_hub_buffers_instead_of_writing(rt, clean):
    hub = LiveHub(rt.store, rt.redis)
    written: list[str] = []
    feed = hub.open("default", direct=lambda texts: written.extend(texts) is None)
    feed.subscribe_channel("jobs")
    held, release = threading.Event(), threading.Event()

    def client_thread() -> None:  # e.g. in the middle of a subscription and its replay
        with feed.lock:
            held.set()
            release.wait(5)

    t = threading.Thread(target=client_thread)
    t.start()
    held.wait(5)
    hub.dispatch(*_event(1))  # returns at once: the hub never waits for a client
    assert written == [] and feed.wake.is_set()
    release.set()
    t.join()
    hub.dispatch(*_event(2))  # 1 is still buffered: 2 goes behind it
    assert written == [] and _ids([f.data for f in feed.drain()]) == [1, 2]
    hub.stop()


class _FakeRawSocket:
    """A blocking socket whose non-blocking sends take at most ``room`` bytes."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.room = 1 << 20

    def gettimeout(self) -> None:
        return None

    def send(self, data: bytes, flags: int = 0) -> int:
        if flags and self.room <= 0:
            raise BlockingIOError
        n = min(len(data), self.room) if flags else len(data)
        self.out += data[:n]
        self.room -= n
        return n

    def sendall(self, data: bytes) -> None:
        self.out += data


def test_a_frame_the_hub_wrote_only_in_part_is_completed_before_anything_else_is_sent():
    from web import live as web_live

    raw = _FakeRawSocket()
    ws = type("WS", (), {})()
    ws.sock, ws.connected, ws.event = raw, True, threading.Event()
    ws.ws = type("Conn", (), {"connection": type("P", (), {"_proto": type("F", (), {"extensions": []})()})()})()
    out = web_live._Socket.wrap(ws)
    assert out.direct_ok and ws.sock is out
    first, second = web_live._encoded('{"op":"event","n":1}'), web_live._encoded('{"op":"pong"}')
    raw.room = 5
    assert out.try_write(('{"op":"event","n":1}',)) is True  # taken: 5 bytes out, the rest pending
    assert ws.event.is_set() and bytes(raw.out) == first[:5]
    assert out.try_write(('{"op":"event","n":2}',)) is False  # nothing may go out before the rest
    ws.sock.send(second)  # e.g. simple_websocket's thread answering a ping, or the handler's reply
    assert bytes(raw.out) == first + second
    raw.room = 0
    assert out.try_write(('{"op":"event","n":3}',)) is False and bytes(raw.out) == first + second


def test_a_client_that_stops_reading_delays_nobody_and_later_gets_every_event_once_in_order(server, base):
    import socket as socket_module

    hub: LiveHub = server[1].extensions["conveyor.live"]
    hub.buffer_events = 100_000
    n = 2000
    try:
        slow = websocket.create_connection(base.replace("http", "ws", 1) + "/api/ws", timeout=20,
                                           sockopt=((socket_module.SOL_SOCKET, socket_module.SO_RCVBUF, 4096),))
        fast = connect(base)
        for ws in (slow, fast):
            send(ws, {"action": "subscribe", "channel": "jobs"})
            assert recv(ws)["op"] == "subscribed"
        fields = {"job": "flood", "tenant": "default", "type": "echo", "queue": "default", "kind": "progress",
                  "state": "running", "percent": "1", "message": "x" * 4000, "attempt": "1", "at": "0"}
        ids = [f"{10**13 + i}-0" for i in range(1, n + 1)]
        flood = threading.Thread(target=lambda: [hub.dispatch(i, fields) for i in ids], daemon=True)
        flood.start()
        fast.settimeout(10)
        assert [recv(fast)["event_id"] for _ in ids] == ids
        flood.join(10)
        assert not flood.is_alive()  # the hub never waited for the client that does not read
        feeds = sorted(hub._feeds, key=lambda f: f.sent_direct)
        assert feeds[0].sent_direct < n // 2 and feeds[-1].sent_direct > 0
        # The slow client reads at last: everything, once, in order, and then nothing more.
        assert [recv(slow)["event_id"] for _ in ids] == ids
        send(slow, {"action": "ping"})
        assert recv(slow) == {"op": "pong"}
        slow.close()
        fast.close()
    finally:
        hub.buffer_events = server[1].extensions["conveyor"].settings.live_buffer_events
