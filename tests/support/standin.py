"""A base for the local stand-in servers of the tests: a threaded HTTP server on 127.0.0.1 and a free port."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StandIn(ThreadingHTTPServer):
    """An HTTP server running in a daemon thread; ``url`` is its base URL. Use as a context manager."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def handle_error(self, request: object, client_address: object) -> None:
        import sys

        # A client that hung up (a timeout test, a capped read) is expected; anything else is printed.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    def start(self) -> StandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Handler(BaseHTTPRequestHandler):
    """Small helpers on top of BaseHTTPRequestHandler; quiet logs."""

    server: Any
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send(self, status: int, data: bytes = b"", content_type: str = "application/octet-stream",
             headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(obj).encode(), "application/json", headers)


class FileServer(StandIn):
    """Serves ``files`` (path -> (bytes, content type)); ``/redirect?to=...`` redirects, ``/status/<n>`` answers n."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.hits: list[str] = []
        super().__init__(_FileHandler)


class _FileHandler(Handler):
    def do_GET(self) -> None:  # noqa: N802
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(self.path)
        self.server.hits.append(parts.path)
        if parts.path == "/redirect":
            target = parse_qs(parts.query)["to"][0]
            self.send(302, b"", headers={"Location": target})
        elif parts.path.startswith("/status/"):
            code = int(parts.path.rsplit("/", 1)[1])
            self.send(code, b"status", "text/plain", headers={"Retry-After": "1"} if code in (429, 503) else None)
        elif parts.path in self.server.files:
            data, ctype = self.server.files[parts.path]
            self.send(200, data, ctype)
        else:
            self.send(404, b"not found", "text/plain")
