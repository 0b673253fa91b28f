"""An OpenAI-compatible images endpoint on 127.0.0.1: ``POST /v1/images/generations``.

It checks the bearer key, answers with a real PNG of the requested size (four coloured quadrants, so
crops can be checked) as ``b64_json`` or as a ``url`` it serves itself, and plays scripted failures:
``fake.fail_next.append((429, {"Retry-After": "1"}))``, or a prompt containing ``[policy]`` gets
OpenAI's 400 ``content_policy_violation``.
"""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from typing import Any

from PIL import Image

from tests.support.standin import Handler, StandIn

#: Quadrant colours: top-left, top-right, bottom-left, bottom-right.
QUADRANTS = ((220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 20))


def quadrant_png(width: int, height: int) -> bytes:
    img = Image.new("RGB", (width, height))
    hw, hh = width // 2, height // 2
    for (x0, y0, x1, y1), colour in zip(((0, 0, hw, hh), (hw, 0, width, hh), (0, hh, hw, height),
                                         (hw, hh, width, height)), QUADRANTS, strict=True):
        img.paste(colour, (x0, y0, x1, y1))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


class FakeOpenAI(StandIn):
    def __init__(self, api_key: str = "sk-test-standin") -> None:
        self.api_key = api_key
        self.response_format_default = "url"
        self.fail_next: list[tuple[int, dict[str, str]]] = []
        self.requests: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        super().__init__(_OpenAIHandler)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


class _OpenAIHandler(Handler):
    server: FakeOpenAI

    def _error(self, status: int, message: str, type_: str, code: str | None,
               headers: dict[str, str] | None = None) -> None:
        self.send_json(status, {"error": {"message": message, "type": type_, "param": None, "code": code}}, headers)

    def do_POST(self) -> None:  # noqa: N802
        body = self.body()
        if self.path != "/v1/images/generations":
            return self._error(404, f"unknown path {self.path}", "invalid_request_error", None)
        if self.headers.get("Authorization") != f"Bearer {self.server.api_key}":
            return self._error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        req = json.loads(body)
        self.server.requests.append(req)
        if self.server.fail_next:
            status, headers = self.server.fail_next.pop(0)
            if status == 429:
                return self._error(429, "Rate limit reached for images per minute.", "requests", "rate_limit_exceeded",
                                   headers)
            return self._error(status, "The server had an error while processing your request.", "server_error", None,
                               headers)
        if "[policy]" in req.get("prompt", ""):
            return self._error(400, "Your request was rejected as a result of our safety system.",
                               "invalid_request_error", "content_policy_violation")
        size = req.get("size") or "1024x1024"
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        png = quadrant_png(width, height)
        fmt = req.get("response_format") or self.server.response_format_default
        item: dict[str, Any] = {"revised_prompt": "revised: " + req["prompt"]}
        if fmt == "b64_json":
            item["b64_json"] = base64.b64encode(png).decode()
        else:
            name = f"/files/{uuid.uuid4().hex}.png"
            self.server.files[name] = png
            item["url"] = self.server.url + name
        self.send_json(200, {"created": int(time.time()), "data": [item]})

    def do_GET(self) -> None:  # noqa: N802
        data = self.server.files.get(self.path.split("?")[0])
        if data is None:
            return self.send(404, b"not found", "text/plain")
        self.send(200, data, "image/png")
