"""service/imaging.py: safe decoding, EXIF orientation, resize modes, encodings and the platform table."""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image

from service.imaging import PLATFORMS, ImageRejected, decode, encode, platform, resize
from tests.support.fake_openai import QUADRANTS, quadrant_png
from tests.support.jobs import image_bytes, open_image

LIMITS = {"max_bytes": 5 * 1024 * 1024, "max_pixels": 4_000_000}


def test_the_platform_table_has_the_documented_sizes_and_aliases():
    assert (PLATFORMS["instagram-square"].width, PLATFORMS["instagram-square"].height) == (1080, 1080)
    assert (PLATFORMS["instagram-portrait"].width, PLATFORMS["instagram-portrait"].height) == (1080, 1350)
    assert (PLATFORMS["instagram-story"].width, PLATFORMS["instagram-story"].height) == (1080, 1920)
    assert platform("instagram-post").name == "instagram-square"
    assert platform("X").name == "twitter-post"
    assert {"facebook-post", "linkedin-post", "pinterest-pin"} <= set(PLATFORMS)
    with pytest.raises(KeyError):
        platform("myspace")


def test_the_platform_table_in_the_docs_matches_the_code():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "job-types.md").read_text()
    for p in PLATFORMS.values():
        assert f"| `{p.name}` | {p.width} | {p.height} |" in doc, p.name


@pytest.mark.parametrize("width,height", [(1080, 1920), (1600, 900), (1000, 1500), (300, 300)])
def test_cover_crops_to_exactly_the_target_size_around_the_centre(width, height):
    img = decode(quadrant_png(800, 400), **LIMITS)
    out = resize(img, width, height, "cover")
    assert out.size == (width, height)
    # the centre of the output is where the four quadrants meet; each corner keeps its own colour
    assert _near(out.getpixel((width // 4, height // 4)), QUADRANTS[0])
    assert _near(out.getpixel((3 * width // 4, 3 * height // 4)), QUADRANTS[3])


def test_contain_keeps_the_aspect_ratio_and_pad_fills_the_box():
    img = decode(image_bytes(800, 400), **LIMITS)
    assert resize(img, 300, 300, "contain").size == (300, 150)
    padded = resize(img, 300, 300, "pad")
    assert padded.size == (300, 300)
    assert padded.getpixel((150, 5))[3] == 0  # transparent band above the picture
    assert resize(img, 2000, 2000, "contain", upscale=False).size == (800, 400)


def test_exif_orientation_is_applied_and_metadata_dropped():
    # Orientation 6 = the camera was turned: stored 400x200 landscape, shown 200x400 portrait.
    img = decode(image_bytes(400, 200, "JPEG", exif_orientation=6), **LIMITS)
    assert img.size == (200, 400)
    out = open_image(encode(img, "jpeg").data)
    assert out.size == (200, 400)
    assert 0x0112 not in out.getexif()


@pytest.mark.parametrize("fmt,pil_format,mime", [("jpeg", "JPEG", "image/jpeg"), ("jpg", "JPEG", "image/jpeg"),
                                                 ("png", "PNG", "image/png"), ("webp", "WEBP", "image/webp")])
def test_each_output_format_encodes_a_real_image_of_that_format(fmt, pil_format, mime):
    img = decode(image_bytes(64, 48), **LIMITS)
    enc = encode(img, fmt)
    opened = open_image(enc.data)
    assert (opened.format, opened.size, enc.content_type) == (pil_format, (64, 48), mime)


def test_a_transparent_png_becomes_a_jpeg_on_white():
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    out = open_image(encode(decode(buf.getvalue(), **LIMITS), "jpeg").data)
    assert out.mode == "RGB" and _near(out.getpixel((5, 5)), (255, 255, 255))


@pytest.mark.parametrize("side", [5_000, 20_000])
def test_a_decompression_bomb_is_rejected_before_its_pixels_are_decoded(side):
    # A tiny PNG claiming side x side pixels: the header alone gives it away (20000^2 is past Pillow's own limit).
    bomb = _png_header_only(side, side)
    assert len(bomb) < 100_000
    with pytest.raises(ImageRejected, match="pixel limit"):
        decode(bomb, **LIMITS)


def test_files_over_the_byte_limit_and_non_images_are_rejected():
    with pytest.raises(ImageRejected, match="byte limit"):
        decode(image_bytes(100, 100), max_bytes=10, max_pixels=10**6)
    with pytest.raises(ImageRejected):
        decode(b"<html>not an image</html>", **LIMITS)


def _near(pixel, colour, tolerance=40):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


def _png_header_only(width: int, height: int) -> bytes:
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")
