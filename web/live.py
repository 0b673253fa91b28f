"""Live status over WebSocket (flask-sock) and Server-Sent Events, fed by the process's LiveHub.

WebSocket ``/api/ws``: the client sends JSON messages

    {"action": "subscribe", "job_id": "...", "since": "<event_id>"}   snapshot, missed events, then live
    {"action": "subscribe", "channel": "jobs", "since": "<event_id>"} every event of the caller's jobs
    {"action": "subscribe", "channel": "stats"}                       job counts now and on change
    {"action": "unsubscribe", "job_id": "..."} / {"action": "unsubscribe", "channel": "..."}
    {"action": "ping"}

and receives messages with an ``op``: ``snapshot``, ``event``, ``subscribed``, ``unsubscribed``, ``stats``,
``pong`` or ``error``. ``/api/jobs/<id>/ws?since=...`` subscribes to one job at connect.
SSE: ``GET /api/sse/jobs/<id>`` and ``GET /api/sse/stats`` (``Last-Event-ID`` or ``?since=`` resumes).

Close codes: 1000 normal, 1008 ping/pong timeout, 1009 message too big, 4001 too slow (buffer overflow),
4002 live feed interrupted, 4004 job not found (URL shortcut only). After 4001/4002, reconnect with since.
"""

from __future__ import annotations

import functools
import json
import logging
import select
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from flask_sock import Sock

from service.errors import InvalidPayload, JobNotFound, ServiceError
from service.feed import CLOSE_NOT_FOUND, Feed, Frame
from service.live import LiveHub
from service.runtime import Runtime, redis_client
from web.api import tenant

__all__ = ["bp", "init_app", "live_hub"]

logger = logging.getLogger(__name__)

bp = Blueprint("live", __name__, url_prefix="/api")
sock = Sock()

#: Redis connections for subscription snapshots and replays; more concurrent subscribes wait their turn.
SNAPSHOT_POOL_SIZE = 32
#: Seconds a dropped (too slow) client gets to take its close frame before its socket is shut down.
SLOW_CLOSE_GRACE_S = 5.0
#: Seconds between SSE keep-alive comments.
SSE_KEEPALIVE_S = 15.0
#: Seconds between two looks at whether an idle SSE client is still connected.
SSE_POLL_S = 1.0
#: Milliseconds an EventSource waits before it reconnects (sent as ``retry:``).
SSE_RETRY_MS = 2000
_WS_ENDPOINTS = {"live.ws_route", "live.job_ws_route"}


def init_app(app: Flask) -> None:
    """Register the live routes and the process's hub (started on the first live request)."""
    rt: Runtime = app.extensions["conveyor"]
    settings = rt.settings
    app.config.setdefault("SOCK_SERVER_OPTIONS", {
        "ping_interval": settings.live_ping_interval_s,
        "max_message_size": settings.ws_max_message_bytes,
    })
    snapshots = None if settings.embedded_store else redis_client(settings, pool_size=SNAPSHOT_POOL_SIZE)
    app.extensions["conveyor.live"] = LiveHub(rt.store, redis_client(settings, blocking=True), snapshots=snapshots,
                                              buffer_events=settings.live_buffer_events,
                                              stats_interval_s=settings.live_stats_interval_s)
    app.register_blueprint(bp)


def live_hub() -> LiveHub:
    return current_app.extensions["conveyor.live"]  # type: ignore[no-any-return]


@bp.before_request
def before_live_request() -> None:
    # Fail before the WebSocket upgrade, with an ordinary JSON error: Redis down -> 503, unknown job -> 404.
    live_hub().start()
    # Messages are small JSON: per-connection compression would cost more CPU than it saves, and without
    # it one encoded frame can be written to every subscriber (see _send).
    request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    if request.endpoint == "live.job_ws_route":
        job_id = (request.view_args or {}).get("job_id", "")
        if live_hub().store.get(job_id, tenant()) is None:
            raise JobNotFound(f"no job {job_id}", details={"job_id": job_id})


# -- WebSocket ---------------------------------------------------------------------------------------


@sock.route("/ws", bp=bp)
def ws_route(ws: Any) -> None:
    serve(ws)


@sock.route("/jobs/<job_id>/ws", bp=bp)
def job_ws_route(ws: Any, job_id: str) -> None:
    serve(ws, {"action": "subscribe", "job_id": job_id, "since": request.args.get("since")})


def serve(ws: Any, first: dict[str, Any] | None = None) -> None:
    """Run one WebSocket connection: client messages, replays and buffered events on this thread; live
    events for a caught-up client are written by the hub's thread (see :class:`_Socket`)."""
    # simple_websocket's reader thread sets ws.event when a message or the close arrives; the hub sets
    # the same event when it buffers something, so one wait covers both.
    out = _Socket.wrap(ws)
    feed = live_hub().open(tenant(), wake=ws.event, direct=out.try_write if out.direct_ok else None)
    out.lock = feed.lock
    feed.on_drop = lambda: _shut_later(ws)
    try:
        if first is not None:
            with feed.lock:
                _send(ws, handle(feed, first))
                if first["job_id"] not in feed.jobs:  # the error message was sent
                    ws.close(CLOSE_NOT_FOUND, "job not found")
                    return
        while True:
            ws.event.clear()
            with feed.lock:  # meanwhile the hub buffers instead of writing: nothing can interleave
                out.flush()  # the rest of a frame the hub could only partly write
                while (raw := ws.receive(timeout=0)) is not None:
                    _send(ws, handle(feed, raw))
                if feed.dropped is not None:
                    ws.close(feed.dropped, feed.drop_reason)
                    return
                _send(ws, feed.drain())
            ws.event.wait(timeout=5.0)
    finally:
        feed.close()


class _Socket:
    """Stands in for the connection's socket (``ws.sock``) so that every write, whichever thread makes it
    (this handler, the hub's reader, simple_websocket's thread with its pings and pongs), goes out whole and
    one at a time under the feed's lock, after the rest of any frame the hub could only partly write."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.raw: socket.socket = ws.sock
        self.lock: threading.RLock = threading.RLock()  # replaced by the feed's before anything is sent
        self.pending = b""
        proto = getattr(getattr(ws.ws, "connection", None), "_proto", None)  # wsproto's frame protocol
        #: The hub may write frames itself: we frame them (no extension was negotiated) and a write can be
        #: made not to wait (a blocking socket; one with a timeout would wait for room even with DONTWAIT).
        self.direct_ok = (proto is not None and not proto.extensions and _DONTWAIT != 0
                          and self.raw.gettimeout() is None)

    @classmethod
    def wrap(cls, ws: Any) -> _Socket:
        out = cls(ws)
        ws.sock = out
        return out

    def try_write(self, texts: tuple[str, ...]) -> bool:
        """From the hub's thread, with the lock held: write event frames without waiting. False when
        nothing was written (the socket is full or gone); the hub then buffers the events."""
        if self.pending or not self.ws.connected:
            return False
        data = _encoded_many(texts)
        try:
            n = self.raw.send(data, _DONTWAIT)
        except OSError:  # BlockingIOError included; a broken socket is for the handler to find out
            return False
        if n < len(data):
            self.pending = data[n:]
            self.ws.event.set()  # the handler completes the frame (blocking) before anything else is sent
        return True

    def flush(self) -> None:
        with self.lock:
            if self.pending:
                data, self.pending = self.pending, b""
                self.raw.sendall(data)

    def sendall(self, data: bytes) -> None:
        with self.lock:
            self.flush()
            self.raw.sendall(data)

    def send(self, data: bytes) -> int:
        self.sendall(data)  # simple_websocket ignores what send returns: a short write would lose bytes
        return len(data)

    def close(self) -> None:
        with self.lock:  # not while the hub writes: the descriptor must not be reused under it
            self.raw.close()

    def __getattr__(self, name: str) -> Any:  # fileno, recv, shutdown, ...: the real socket's
        return getattr(self.raw, name)


_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)  # 0: not on this platform


def _send(ws: Any, frames: list[Frame]) -> None:
    if not frames:
        return
    proto = getattr(getattr(ws.ws, "connection", None), "_proto", None)  # wsproto's frame protocol
    if proto is None or proto.extensions:  # an extension was negotiated after all: let wsproto frame it
        for frame in frames:
            ws.send(frame.data)
        return
    if not ws.connected:
        ws.send("")  # raises ConnectionClosed
    ws.sock.sendall(b"".join(_encoded(frame.data) for frame in frames))


@functools.lru_cache(maxsize=4096)
def _encoded(text: str) -> bytes:
    """A server-to-client text frame (unmasked, unfragmented): the same bytes for every subscriber, so a
    live event fanned out to many sockets is encoded once (its text object is shared by their buffers)."""
    data = text.encode()
    n = len(data)
    if n < 126:
        head = struct.pack("!BB", 0x81, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + data


@functools.lru_cache(maxsize=256)
def _encoded_many(texts: tuple[str, ...]) -> bytes:
    """The frames of a few events that many subscribers get together, joined once for all of them."""
    return b"".join(_encoded(t) for t in texts)


def _shut_later(ws: Any) -> None:
    """A dropped client that does not read either would keep its handler blocked in send: shut the
    socket down if the handler has not closed it within the grace period."""
    def shut() -> None:
        if ws.connected:
            try:
                ws.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(SLOW_CLOSE_GRACE_S, shut)
    timer.daemon = True
    timer.start()


def handle(feed: Feed, raw: Any) -> list[Frame]:
    """Answer one client message; a bad one gets an ``error`` message, never an exception."""
    msg: Any = None
    try:
        msg = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
        if not isinstance(msg, dict):
            raise InvalidPayload("expected a JSON object with an action", details={"action": ["Missing."]})
        action = msg.get("action")
        if action == "subscribe":
            if "job_id" in msg:
                return feed.subscribe_job(msg["job_id"], msg.get("since"))
            if "channel" in msg:
                return feed.subscribe_channel(msg["channel"], msg.get("since"))
            raise InvalidPayload("subscribe needs a job_id or a channel", details={"job_id": ["Missing."]})
        if action == "unsubscribe":
            if "job_id" in msg:
                ok = feed.unsubscribe_job(str(msg["job_id"]))
                return [_frame({"op": "unsubscribed", "job_id": msg["job_id"], "was_subscribed": ok})]
            if "channel" in msg:
                ok = feed.unsubscribe_channel(msg["channel"])
                return [_frame({"op": "unsubscribed", "channel": msg["channel"], "was_subscribed": ok})]
            raise InvalidPayload("unsubscribe needs a job_id or a channel", details={"job_id": ["Missing."]})
        if action == "ping":
            return [_frame({"op": "pong"})]
        raise InvalidPayload("action must be subscribe, unsubscribe or ping", details={"action": ["Invalid."]})
    except ValueError:
        return [_error("invalid_payload", "messages must be JSON", {}, msg)]
    except ServiceError as exc:
        return [_error(exc.code, exc.message, exc.details, msg)]


def _frame(obj: dict[str, Any]) -> Frame:
    return Frame(json.dumps(obj, separators=(",", ":")))


def _error(code: str, message: str, details: dict[str, Any], msg: Any) -> Frame:
    out: dict[str, Any] = {"op": "error", "error": code, "message": message, "details": details}
    if isinstance(msg, dict):
        out.update({k: msg[k] for k in ("action", "job_id", "channel") if k in msg and _plain(msg[k])})
    return _frame(out)


def _plain(value: Any) -> bool:
    return isinstance(value, (str, int)) and len(str(value)) <= 200


# -- Server-Sent Events ------------------------------------------------------------------------------


@bp.get("/sse/jobs/<job_id>")
def sse_job(job_id: str) -> Response:
    since = request.headers.get("Last-Event-ID") or request.args.get("since")
    feed = live_hub().open(tenant())
    try:
        first = feed.subscribe_job(job_id, since)
    except Exception:
        feed.close()
        raise
    return _sse_response(feed, first)


@bp.get("/sse/stats")
def sse_stats() -> Response:
    feed = live_hub().open(tenant())
    try:
        first = feed.subscribe_channel("stats")[1:]  # no "subscribed" acknowledgement on SSE
    except Exception:
        feed.close()
        raise
    return _sse_response(feed, first)


def _sse_response(feed: Feed, first: list[Frame]) -> Response:
    keepalive_s = min(SSE_KEEPALIVE_S, current_app.extensions["conveyor"].settings.live_ping_interval_s)
    client = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")

    def stream() -> Iterator[str]:
        try:
            yield f"retry: {SSE_RETRY_MS}\n\n"
            yield "".join(_sse(f) for f in first)
            idle_s = 0.0
            while True:
                feed.wake.clear()
                if feed.dropped is not None:
                    yield f"event: close\ndata: {json.dumps({'code': feed.dropped, 'reason': feed.drop_reason})}\n\n"
                    return
                frames = feed.drain()
                if frames:
                    idle_s = 0.0
                    yield "".join(_sse(f) for f in frames)
                elif not feed.wake.wait(SSE_POLL_S):
                    # A streaming response only learns of a gone client when it writes: look at the socket.
                    if _hung_up(client):
                        return
                    idle_s += SSE_POLL_S
                    if idle_s >= keepalive_s:
                        idle_s = 0.0
                        yield ": keep-alive\n\n"
        finally:
            feed.close()

    return Response(stream(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _hung_up(sock: socket.socket | None) -> bool:
    """Whether the client closed its side (readable with nothing to read). Never blocks."""
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (OSError, ValueError):
        return True


def _sse(frame: Frame) -> str:
    # The snapshot carries no id, so that Last-Event-ID only ever names an event the client received.
    head = f"id: {frame.event_id}\n" if frame.event_id else ""
    return f"{head}data: {frame.data}\n\n"

