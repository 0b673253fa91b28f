"""Image operations for the image job types (Pillow): safe decoding, resizing to a box, encoding.

Decoding is guarded: the file size is checked before anything is parsed, and the pixel count from the header
is checked before any pixel is decoded, so a small file that expands to gigapixels (a decompression bomb)
is refused without allocating it. EXIF orientation is applied, then all metadata is dropped (camera
make, GPS...). Resampling is Lanczos with Pillow's ``reducing_gap`` (fast and sharp on large downscales).

Social platform sizes live in :data:`PLATFORMS`, the one table that code and docs/job-types.md follow.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "Platform", "PLATFORMS", "PLATFORM_ALIASES", "platform", "FORMATS", "Encoded",
    "ImageRejected", "decode", "resize", "encode", "Mode",
]

Mode = Literal["cover", "contain", "pad"]


@dataclass(frozen=True)
class Platform:
    """A target platform variant: exact output pixel size (width x height)."""

    name: str
    width: int
    height: int
    label: str

    @property
    def aspect(self) -> str:
        from math import gcd

        g = gcd(self.width, self.height)
        return f"{self.width // g}:{self.height // g}"


#: Output size per platform variant (recommended upload sizes, 2024-2025). Every variant is cropped to
#: exactly this size around the image centre ("cover"). Keep docs/job-types.md in step with this table.
PLATFORMS: dict[str, Platform] = {p.name: p for p in (
    Platform("instagram-square", 1080, 1080, "Instagram feed post, square"),
    Platform("instagram-portrait", 1080, 1350, "Instagram feed post, portrait 4:5"),
    Platform("instagram-landscape", 1080, 566, "Instagram feed post, landscape 1.91:1"),
    Platform("instagram-story", 1080, 1920, "Instagram story / reel, 9:16"),
    Platform("twitter-post", 1600, 900, "X / Twitter in-feed image, 16:9"),
    Platform("twitter-header", 1500, 500, "X / Twitter header, 3:1"),
    Platform("facebook-post", 1200, 630, "Facebook feed / link image, 1.91:1"),
    Platform("facebook-story", 1080, 1920, "Facebook story, 9:16"),
    Platform("linkedin-post", 1200, 627, "LinkedIn feed / link image, 1.91:1"),
    Platform("pinterest-pin", 1000, 1500, "Pinterest standard pin, 2:3"),
)}

#: Other accepted names (seed 002 says ``instagram-post`` and ``twitter-post``).
PLATFORM_ALIASES: dict[str, str] = {
    "instagram": "instagram-square", "instagram-post": "instagram-square", "instagram-feed": "instagram-square",
    "twitter": "twitter-post", "x": "twitter-post", "x-post": "twitter-post",
    "facebook": "facebook-post", "linkedin": "linkedin-post", "pinterest": "pinterest-pin",
}

#: Output formats: name -> (Pillow format, content type, file extension).
FORMATS: dict[str, tuple[str, str, str]] = {
    "jpeg": ("JPEG", "image/jpeg", "jpg"),
    "png": ("PNG", "image/png", "png"),
    "webp": ("WEBP", "image/webp", "webp"),
}
_FORMAT_ALIASES = {"jpg": "jpeg"}
#: Input formats accepted by :func:`decode`.
INPUT_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})


class ImageRejected(ValueError):
    """Raised when an input is not an image we accept: unknown format, too large, too many pixels."""


def platform(name: str) -> Platform:
    """The platform variant called ``name`` (or one of its aliases); KeyError if unknown."""
    key = name.strip().lower()
    return PLATFORMS[PLATFORM_ALIASES.get(key, key)]


def format_name(name: str) -> str:
    """The canonical output format name (``jpg`` -> ``jpeg``); KeyError if unsupported."""
    key = _FORMAT_ALIASES.get(name.strip().lower(), name.strip().lower())
    FORMATS[key]  # noqa: B018
    return key


def decode(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Open an image safely and return it upright (EXIF orientation applied), fully loaded, without metadata.

    Raises ImageRejected for files over ``max_bytes``, images over ``max_pixels`` and non-images.
    """
    if len(data) > max_bytes:
        raise ImageRejected(f"image file is {len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in INPUT_FORMATS:
                raise ImageRejected(f"unsupported image format {img.format!r}")
            width, height = img.size
            if width * height > max_pixels:
                raise ImageRejected(f"image is {width}x{height} = {width * height} pixels, over the "
                                    f"{max_pixels}-pixel limit (decompression bomb?)")
            img.load()
            upright = _working_mode(ImageOps.exif_transpose(img))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(f"image is over the {max_pixels}-pixel limit (decompression bomb?)") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image in a known format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageRejected):
            raise
        raise ImageRejected(f"image could not be decoded: {exc}") from None
    upright.info = {}  # drop EXIF, ICC, comments: nothing of the source's metadata is passed on
    return upright


def resize(img: Image.Image, width: int, height: int, mode: Mode = "cover", *, upscale: bool = True,
           background: tuple[int, int, int, int] = (255, 255, 255, 0)) -> Image.Image:
    """Fit ``img`` to ``width`` x ``height``.

    ``cover``: crop to the target aspect around the centre, then scale: exactly ``width`` x ``height``.
    ``contain``: scale to fit inside the box, keeping the aspect: at most ``width`` x ``height``.
    ``pad``: ``contain``, then centre on a ``background`` canvas of exactly ``width`` x ``height``.
    With ``upscale=False`` an image is never enlarged (``contain`` only).
    """
    if width < 1 or height < 1:
        raise ValueError("width and height must be positive")
    img = _working_mode(img)
    src_w, src_h = img.size
    if mode == "cover":
        target_ratio = width / height
        if src_w / src_h > target_ratio:  # too wide: crop the sides
            crop_w = src_h * target_ratio
            box = ((src_w - crop_w) / 2, 0.0, (src_w + crop_w) / 2, float(src_h))
        else:  # too tall: crop top and bottom
            crop_h = src_w / target_ratio
            box = (0.0, (src_h - crop_h) / 2, float(src_w), (src_h + crop_h) / 2)
        return img.resize((width, height), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    scale = min(width / src_w, height / src_h)
    if not upscale:
        scale = min(scale, 1.0)
    size = (max(1, round(src_w * scale)), max(1, round(src_h * scale)))
    fitted = img if size == img.size else img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if mode == "contain":
        return fitted
    if mode == "pad":
        canvas = Image.new("RGBA", (width, height), background)
        canvas.paste(fitted.convert("RGBA"), ((width - size[0]) // 2, (height - size[1]) // 2))
        return canvas if img.mode == "RGBA" or background[3] < 255 else canvas.convert("RGB")
    raise ValueError(f"unknown resize mode {mode!r}")


@dataclass(frozen=True)
class Encoded:
    """An encoded image ready to store."""

    data: bytes
    format: str
    content_type: str
    extension: str
    width: int
    height: int


def encode(img: Image.Image, fmt: str = "jpeg", *, quality: int = 85) -> Encoded:
    """Encode to ``jpeg`` (alpha flattened on white, progressive), ``png`` (optimized) or ``webp``."""
    name = format_name(fmt)
    pil_format, content_type, ext = FORMATS[name]
    out = io.BytesIO()
    if name == "jpeg":
        _flatten(img).save(out, "JPEG", quality=quality, optimize=True, progressive=True)
    elif name == "png":
        img.save(out, "PNG", optimize=True)
    else:
        img.save(out, "WEBP", quality=quality, method=4)
    return Encoded(out.getvalue(), name, content_type, ext, img.width, img.height)


def _working_mode(img: Image.Image) -> Image.Image:
    """RGB or RGBA (palette and 16-bit images resample badly or not at all)."""
    if img.mode in ("RGB", "RGBA"):
        return img
    has_alpha = img.mode in ("LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    return img.convert("RGBA" if has_alpha else "RGB")


def _flatten(img: Image.Image) -> Image.Image:
    if img.mode == "RGBA":
        canvas = Image.new("RGB", img.size, (255, 255, 255))
        canvas.paste(img, mask=img.getchannel("A"))
        return canvas
    return img.convert("RGB") if img.mode != "RGB" else img
