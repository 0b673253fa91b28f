"""Image job types: ``images.generate`` (OpenAI, one variant per social platform), ``images.resize`` and
``images.thumbnail``. Inputs and outputs live in storage (service/storage.py); results carry references.

Settings are read when a job runs (``get_runtime().settings``), so one worker serves whatever the
environment configured, and tests can swap them.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates, validates_schema

from service import http
from service.config import Settings
from service.context import current_job
from service.errors import PermanentJobError, RetryJob
from service.imaging import FORMATS, PLATFORMS, ImageRejected, decode, encode, format_name, platform, resize
from service.registry import Backoff, job_type
from service.runtime import get_runtime
from service.storage import InvalidKey, ObjectNotFound, StorageError, StorageUnavailable, check_key, storage_for

__all__ = ["generate_images", "resize_image", "thumbnail_image"]

logger = logging.getLogger(__name__)

#: Image sizes the OpenAI images endpoint accepts (DALL-E 3 and gpt-image models).
OPENAI_SIZES = ("auto", "1024x1024", "1792x1024", "1024x1792", "1536x1024", "1024x1536", "512x512", "256x256")
#: Most platform variants / output sizes one job may produce.
MAX_VARIANTS = 20
_FORMAT_NAMES = sorted(set(FORMATS) | {"jpg"})
_SAFE_ID = validate.Regexp(r"^[A-Za-z0-9_.-]{1,128}$", error="Use 1-128 letters, digits, '_', '.' or '-'.")


def settings() -> Settings:
    """The settings of this process's runtime, read at call time."""
    return get_runtime().settings


def _job_id() -> str:
    return getattr(current_job(), "job_id", None) or uuid.uuid4().hex


# -- payload schemas -----------------------------------------------------------------------------------


class GenerateSchema(Schema):
    """``images.generate``; also accepts seed 002's ``imageType`` (= style) and ``userId``."""

    prompt = fields.String(required=True, validate=validate.Length(min=1, max=4000),
                           metadata={"description": "what to draw"})
    platforms = fields.List(fields.String(), load_default=lambda: ["instagram-square"],
                            validate=validate.Length(min=1, max=MAX_VARIANTS),
                            metadata={"description": "platform variants, see docs/job-types.md"})
    style = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(["vivid", "natural"]))
    imageType = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(["vivid", "natural"]),
                              metadata={"description": "seed-002 name of style"})
    size = fields.String(load_default="1024x1024", validate=validate.OneOf(OPENAI_SIZES),
                         metadata={"description": "size asked of the model, before the platform crops"})
    quality = fields.String(load_default=None, allow_none=True,
                            validate=validate.OneOf(["standard", "hd", "low", "medium", "high", "auto"]))
    format = fields.String(load_default="jpeg", validate=validate.OneOf(_FORMAT_NAMES))
    user_id = fields.String(load_default=None, allow_none=True, validate=_SAFE_ID)
    userId = fields.String(load_default=None, allow_none=True, validate=_SAFE_ID,
                           metadata={"description": "seed-002 name of user_id"})

    @validates("platforms")
    def _known_platforms(self, value: list[str], **_: Any) -> None:
        unknown = [p for p in value if not _is_platform(p)]
        if unknown:
            raise ValidationError(f"unknown platforms {unknown}; known: {sorted(PLATFORMS)}")

    @post_load
    def _normalise(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        data["style"] = data.get("style") or data.pop("imageType", None)
        data.pop("imageType", None)
        data["user_id"] = data.get("user_id") or data.pop("userId", None)
        data.pop("userId", None)
        data["platforms"] = list(dict.fromkeys(platform(p).name for p in data["platforms"]))
        data["format"] = format_name(data["format"])
        return data


def _is_platform(name: str) -> bool:
    try:
        platform(name)
        return True
    except KeyError:
        return False


class SourceSchema(Schema):
    """An input image: a stored object ``key`` or an http(s) ``url`` (exactly one)."""

    key = fields.String(load_default=None, allow_none=True, metadata={"description": "storage key of the input"})
    url = fields.Url(load_default=None, allow_none=True, schemes={"http", "https"}, require_tld=False,
                     metadata={"description": "http(s) URL of the input"})
    quality = fields.Integer(load_default=85, validate=validate.Range(min=1, max=100))
    prefix = fields.String(load_default=None, allow_none=True,
                           metadata={"description": "storage key prefix of the outputs (default: <kind>/<job id>)"})

    @validates_schema
    def _one_source(self, data: dict[str, Any], **_: Any) -> None:
        if bool(data.get("key")) == bool(data.get("url")):
            raise ValidationError("give exactly one of 'key' and 'url'", "key")
        for name in ("key", "prefix"):
            if data.get(name):
                try:
                    check_key(data[name])
                except InvalidKey as exc:
                    raise ValidationError(str(exc), name) from None


class SizeSchema(Schema):
    width = fields.Integer(required=True, validate=validate.Range(min=1, max=10_000))
    height = fields.Integer(required=True, validate=validate.Range(min=1, max=10_000))
    mode = fields.String(load_default="cover", validate=validate.OneOf(["cover", "contain", "pad"]))
    name = fields.String(load_default=None, allow_none=True, validate=_SAFE_ID)


class ResizeSchema(SourceSchema):
    sizes = fields.List(fields.Nested(SizeSchema), required=True, validate=validate.Length(min=1, max=MAX_VARIANTS))
    formats = fields.List(fields.String(validate=validate.OneOf(_FORMAT_NAMES)), load_default=lambda: ["jpeg"],
                          validate=validate.Length(min=1, max=3))

    @post_load
    def _normalise(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        data["formats"] = list(dict.fromkeys(format_name(f) for f in data["formats"]))
        return data


class ThumbnailSchema(SourceSchema):
    sizes = fields.List(fields.Integer(validate=validate.Range(min=8, max=4096)), load_default=lambda: [128, 256],
                        validate=validate.Length(min=1, max=MAX_VARIANTS),
                        metadata={"description": "longest edge of each thumbnail, in pixels"})
    format = fields.String(load_default="webp", validate=validate.OneOf(_FORMAT_NAMES))
    square = fields.Boolean(load_default=False, metadata={"description": "crop to a centred square"})

    @post_load
    def _normalise(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        data["format"] = format_name(data["format"])
        return data


# -- shared steps --------------------------------------------------------------------------------------


def _fetch(url: str, s: Settings, what: str) -> bytes:
    """GET ``url`` through the guarded helper, mapping failures to retry-or-fail."""
    try:
        resp = http.request("GET", url, timeout_s=s.http_timeout_s, max_redirects=s.http_max_redirects,
                            max_bytes=min(s.http_max_response_bytes, s.image_max_input_bytes))
        return resp.raise_for_status().content
    except http.HTTPStatusError as exc:
        if exc.retryable:
            raise RetryJob(f"{what}: {exc}", delay_s=exc.retry_after_s) from None
        raise PermanentJobError(f"{what}: {exc}") from None
    except http.TransportError as exc:
        raise RetryJob(f"{what}: {exc}") from None
    except http.OutboundError as exc:
        raise PermanentJobError(f"{what}: {exc}") from None


def _load_source(key: str | None, url: str | None, s: Settings) -> Any:
    if url:
        data = _fetch(url, s, "could not fetch the source image")
    else:
        assert key is not None
        try:
            data = storage_for(s).get(key, max_bytes=s.image_max_input_bytes)
        except ObjectNotFound as exc:
            raise PermanentJobError(str(exc)) from None
        except StorageUnavailable:
            raise
        except StorageError as exc:
            raise PermanentJobError(str(exc)) from None
    return _decode(data, s)


def _decode(data: bytes, s: Settings) -> Any:
    try:
        return decode(data, max_bytes=s.image_max_input_bytes, max_pixels=s.image_max_pixels)
    except ImageRejected as exc:
        raise PermanentJobError(f"source image rejected: {exc}") from None


def _store(img: Any, key_base: str, fmt: str, quality: int, s: Settings, **extra: Any) -> dict[str, Any]:
    enc = encode(img, fmt, quality=quality)
    obj = storage_for(s).put(f"{key_base}.{enc.extension}", enc.data, enc.content_type)
    return {**extra, "width": enc.width, "height": enc.height, "format": enc.format, **obj.to_dict()}


def _check_pixels(width: int, height: int, s: Settings) -> None:
    if width * height > s.image_max_pixels:
        raise PermanentJobError(f"output {width}x{height} is over the {s.image_max_pixels}-pixel limit")


# -- images.generate -----------------------------------------------------------------------------------


def _openai_image(s: Settings, *, prompt: str, size: str, style: str | None, quality: str | None,
                  user_id: str | None) -> tuple[bytes, str | None]:
    """Ask the OpenAI images endpoint for one image; returns (image bytes, revised prompt)."""
    import openai

    if not s.openai_api_key:
        raise PermanentJobError("images.generate needs an OpenAI key: set CONVEYOR_OPENAI_API_KEY "
                                "(and CONVEYOR_OPENAI_BASE_URL for an OpenAI-compatible provider)")
    params: dict[str, Any] = {"model": s.openai_image_model, "prompt": prompt, "n": 1, "size": size}
    if s.openai_image_model.startswith("dall-e"):
        params["response_format"] = "b64_json"
        if style and s.openai_image_model == "dall-e-3":
            params["style"] = style
    if quality:
        params["quality"] = quality
    if user_id:
        params["user"] = user_id
    try:
        with openai.OpenAI(api_key=s.openai_api_key, base_url=s.openai_base_url or None,
                           timeout=s.openai_timeout_s, max_retries=0) as client:
            response = client.images.generate(**params)
    except openai.APIStatusError as exc:
        raise _provider_error(exc) from None
    except (openai.APITimeoutError, openai.APIConnectionError) as exc:
        raise RetryJob(f"OpenAI images endpoint unreachable ({type(exc).__name__})") from None
    if not response.data:
        raise RetryJob("OpenAI returned no image")
    item = response.data[0]
    if item.b64_json:
        import base64
        import binascii

        try:
            return base64.b64decode(item.b64_json, validate=True), item.revised_prompt
        except (binascii.Error, ValueError):
            raise RetryJob("OpenAI returned an image that is not valid base64") from None
    if item.url:
        return _fetch(item.url, s, "could not download the generated image"), item.revised_prompt
    raise RetryJob("OpenAI returned neither image data nor a URL")


def _provider_error(exc: Any) -> Exception:
    """429/5xx: retry (after Retry-After); quota, content policy and other 4xx: final."""
    status = exc.status_code
    code = getattr(exc, "code", None) or ""
    body = exc.body if isinstance(exc.body, dict) else {}
    message = str(body.get("message") or exc.message)[:500]
    headers = exc.response.headers
    if (status == 429 and code != "insufficient_quota") or status in (408, 409) or status >= 500:
        delay = http.parse_retry_after(headers.get("retry-after"))
        if headers.get("retry-after-ms", "").isdigit():
            delay = int(headers["retry-after-ms"]) / 1000
        return RetryJob(f"OpenAI answered HTTP {status}: {message}", delay_s=delay)
    if code == "content_policy_violation":
        return PermanentJobError(f"OpenAI refused the prompt (content_policy_violation): {message}")
    return PermanentJobError(f"OpenAI rejected the request (HTTP {status}{', ' + code if code else ''}): {message}")


@job_type("images.generate", schema=GenerateSchema, queue="images", max_retries=4,
          backoff=Backoff(kind="exponential", base_s=5, max_s=300), time_limit_s=900)
def generate_images(prompt: str, platforms: list[str], style: str | None = None, size: str = "1024x1024",
                    quality: str | None = None, format: str = "jpeg", user_id: str | None = None) -> dict[str, Any]:
    """Generate an image with OpenAI, then crop and resize it for each platform and store every variant."""
    s = settings()
    job = current_job()
    job_id = _job_id()
    base = f"generated/{user_id}/{job_id}" if user_id else f"generated/{job_id}"
    job.progress(5, "asking OpenAI for the image")
    data, revised = _openai_image(s, prompt=prompt, size=size, style=style, quality=quality, user_id=user_id)
    img = _decode(data, s)
    job.progress(40, f"image received ({img.width}x{img.height})")
    original = _store(img, f"{base}/original", "png", 100, s)
    images = []
    for i, name in enumerate(platforms, 1):
        p = PLATFORMS[name]
        images.append(_store(resize(img, p.width, p.height, "cover"), f"{base}/{p.name}", format, 90, s,
                             platform=p.name))
        job.progress(40 + 58 * i / len(platforms), f"stored {p.name} ({p.width}x{p.height})")
    return {"success": True, "generationId": job_id, "prompt": prompt, "revised_prompt": revised,
            "model": s.openai_image_model, "original": original, "images": images, "totalImages": len(images)}


# -- images.resize / images.thumbnail ------------------------------------------------------------------


@job_type("images.resize", schema=ResizeSchema, queue="images", max_retries=3,
          backoff=Backoff(kind="exponential", base_s=2, max_s=120), time_limit_s=300)
def resize_image(sizes: list[dict[str, Any]], formats: list[str], key: str | None = None, url: str | None = None,
                 quality: int = 85, prefix: str | None = None) -> dict[str, Any]:
    """Resize a stored or http(s) image to each size (cover/contain/pad) in each format; store every output."""
    s = settings()
    for size in sizes:
        _check_pixels(size["width"], size["height"], s)
    job = current_job()
    base = prefix or f"resized/{_job_id()}"
    job.progress(5, "fetching the source image")
    img = _load_source(key, url, s)
    job.progress(20, f"source is {img.width}x{img.height}")
    images, total, done = [], len(sizes) * len(formats), 0
    for size in sizes:
        out = resize(img, size["width"], size["height"], size["mode"])
        name = size.get("name") or f"{size['width']}x{size['height']}"
        for fmt in formats:
            images.append(_store(out, f"{base}/{name}", fmt, quality, s, name=name, mode=size["mode"]))
            done += 1
            job.progress(20 + 78 * done / total, f"stored {name} as {fmt}")
    return {"source": {"key": key} if key else {"url": http.redact_url(url or "")},
            "source_width": img.width, "source_height": img.height, "images": images}


@job_type("images.thumbnail", schema=ThumbnailSchema, queue="images", max_retries=3,
          backoff=Backoff(kind="exponential", base_s=2, max_s=120), time_limit_s=300)
def thumbnail_image(sizes: list[int], format: str, square: bool = False, key: str | None = None,
                    url: str | None = None, quality: int = 85, prefix: str | None = None) -> dict[str, Any]:
    """Make thumbnails whose longest edge is each size (never enlarged), or centred squares."""
    s = settings()
    job = current_job()
    base = prefix or f"thumbnails/{_job_id()}"
    job.progress(5, "fetching the source image")
    img = _load_source(key, url, s)
    images = []
    for i, edge in enumerate(sizes, 1):
        if square:
            side = min(edge, img.width, img.height)
            out = resize(img, side, side, "cover")
        else:
            out = resize(img, edge, edge, "contain", upscale=False)
        images.append(_store(out, f"{base}/{edge}", format, quality, s, name=str(edge)))
        job.progress(20 + 78 * i / len(sizes), f"stored {edge}px thumbnail")
    return {"source": {"key": key} if key else {"url": http.redact_url(url or "")},
            "source_width": img.width, "source_height": img.height, "images": images}
