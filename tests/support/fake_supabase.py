"""A Supabase-storage-compatible endpoint on 127.0.0.1 (the subset storage3 uses), backed by a dict.

``POST|PUT /storage/v1/object/<bucket>/<path>`` (multipart upload), ``GET /storage/v1/object/<bucket>/<path>``
(authenticated download), ``GET /storage/v1/object/public/<bucket>/<path>``, ``POST /storage/v1/object/sign/
<bucket>/<path>`` + ``GET`` of the signed URL, ``DELETE /storage/v1/object/<bucket>`` with ``{"prefixes": [...]}``.
Errors use Supabase's JSON shape ``{"statusCode", "error", "message"}``.
"""

from __future__ import annotations

import json
import secrets
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support.standin import Handler, StandIn

PREFIX = "/storage/v1/object/"


class FakeSupabase(StandIn):
    def __init__(self, key: str = "service-role-test-key", buckets: tuple[str, ...] = ("conveyor",)) -> None:
        self.key = key
        self.buckets = set(buckets)
        self.objects: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.tokens: dict[str, tuple[str, str]] = {}
        self.fail_next: list[int] = []
        super().__init__(_SupabaseHandler)


class _SupabaseHandler(Handler):
    server: FakeSupabase

    def _err(self, status: int, error: str, message: str) -> None:
        self.send_json(status, {"statusCode": str(status), "error": error, "message": message})

    def _authorized(self) -> bool:
        ok = self.headers.get("Authorization") == f"Bearer {self.server.key}"
        if not ok:
            self._err(403, "Unauthorized", "invalid signature")
        return ok

    def _split(self, rest: str) -> tuple[str, str]:
        bucket, _, path = unquote(rest).partition("/")
        return bucket, path

    def _injected_failure(self) -> bool:
        if self.server.fail_next:
            self._err(self.server.fail_next.pop(0), "InternalError", "injected failure")
            return True
        return False

    def do_POST(self) -> None:  # noqa: N802
        self._upload()

    def do_PUT(self) -> None:  # noqa: N802
        self._upload()

    def _upload(self) -> None:
        body = self.body()
        path = urlsplit(self.path).path
        if not path.startswith(PREFIX):
            return self._err(404, "not_found", "route not found")
        if not self._authorized() or self._injected_failure():
            return None
        rest = path[len(PREFIX):]
        if rest.startswith("sign/"):
            bucket, name = self._split(rest[len("sign/"):])
            if (bucket, name) not in self.server.objects:
                return self._err(404, "not_found", "Object not found")
            token = secrets.token_urlsafe(16)
            self.server.tokens[token] = (bucket, name)
            expires = json.loads(body).get("expiresIn")
            return self.send_json(200, {"signedURL": f"/object/sign/{bucket}/{name}?token={token}&exp={expires}"})
        bucket, name = self._split(rest)
        if bucket not in self.server.buckets:
            return self._err(404, "Bucket not found", "Bucket not found")
        if self.command == "POST" and (bucket, name) in self.server.objects and self.headers.get("x-upsert") != "true":
            return self._err(409, "Duplicate", "The resource already exists")
        data, content_type = _file_part(self.headers.get("Content-Type", ""), body)
        self.server.objects[(bucket, name)] = (data, content_type)
        self.send_json(200, {"Key": f"{bucket}/{name}", "Id": secrets.token_hex(8)})

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        path = parts.path
        if not path.startswith(PREFIX):
            return self._err(404, "not_found", "route not found")
        rest = path[len(PREFIX):]
        if rest.startswith("public/"):
            key = self._split(rest[len("public/"):])
        elif rest.startswith("sign/"):
            token = parse_qs(parts.query).get("token", [""])[0]
            key = self.server.tokens.get(token)  # type: ignore[assignment]
            if key is None or key != self._split(rest[len("sign/"):]):
                return self._err(400, "InvalidSignature", "invalid token")
        else:
            if not self._authorized() or self._injected_failure():
                return None
            key = self._split(rest)
        if key not in self.server.objects:
            return self._err(404, "not_found", "Object not found")
        data, content_type = self.server.objects[key]
        self.send(200, data, content_type)

    def do_DELETE(self) -> None:  # noqa: N802
        body = self.body()
        path = urlsplit(self.path).path
        if not path.startswith(PREFIX) or not self._authorized():
            return None
        bucket = unquote(path[len(PREFIX):]).strip("/")
        removed: list[dict[str, Any]] = []
        for name in json.loads(body).get("prefixes", []):
            if self.server.objects.pop((bucket, name), None) is not None:
                removed.append({"name": name, "bucket_id": bucket})
        self.send_json(200, removed)


def _file_part(content_type: str, body: bytes) -> tuple[bytes, str]:
    """The ``file`` part of a multipart/form-data body: (bytes, its content type)."""
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            return part.get_payload(decode=True), part.get_content_type()
    raise ValueError("no file part")
