"""Helpers for unit tests of job types on the embedded runtime: settings swaps and waiting on jobs."""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any

from PIL import Image

FINAL = {"succeeded", "failed", "cancelled"}


def use_settings(rt: Any, monkeypatch: Any, **changes: Any) -> None:
    """Give the runtime new settings for this test (actors read ``get_runtime().settings`` at call time)."""
    monkeypatch.setattr(rt, "settings", dataclasses.replace(rt.settings, **changes))


def submit(client: Any, type_: str, payload: dict[str, Any], **envelope: Any) -> dict[str, Any]:
    r = client.post("/api/jobs", json={"type": type_, "payload": payload, **envelope})
    assert r.status_code == 202, r.get_json()
    return r.get_json()  # type: ignore[no-any-return]


def wait_final(client: Any, job_id: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").get_json()
        if job["state"] in FINAL:
            return job  # type: ignore[no-any-return]
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {job}")


def result(client: Any, job_id: str) -> Any:
    r = client.get(f"/api/jobs/{job_id}/result")
    assert r.status_code == 200, r.get_json()
    return r.get_json()["result"]


def image_bytes(width: int, height: int, fmt: str = "PNG", colour: tuple[int, int, int] = (200, 100, 50),
                exif_orientation: int | None = None) -> bytes:
    img = Image.new("RGB", (width, height), colour)
    out = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def open_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img
