"""images.generate, images.resize and images.thumbnail on the embedded worker, with the real ``openai`` and
``supabase`` clients against local stand-ins. Output images are opened and measured."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from service.imaging import PLATFORMS
from service.storage import storage_for
from tests.support.fake_openai import FakeOpenAI
from tests.support.fake_supabase import FakeSupabase
from tests.support.jobs import image_bytes, open_image, result, submit, use_settings, wait_final
from tests.support.standin import FileServer


@pytest.fixture
def storage_dir(rt, monkeypatch, tmp_path) -> Path:
    use_settings(rt, monkeypatch, storage_backend="local", storage_dir=str(tmp_path / "storage"))
    return tmp_path / "storage"


@pytest.fixture
def openai_api(rt, monkeypatch, storage_dir):
    with FakeOpenAI() as server:
        use_settings(rt, monkeypatch, openai_base_url=server.base_url, openai_api_key=server.api_key,
                     openai_image_model="dall-e-3")
        yield server


@pytest.fixture
def files():
    with FileServer() as server:
        yield server


def stored(rt, key: str):
    return open_image(storage_for(rt.settings).get(key))


def test_the_seed_generate_endpoint_makes_one_variant_per_platform_at_its_exact_size(rt, worker, client, openai_api):
    r = client.post("/api/jobs/generate", json={"userId": "user-123", "prompt": "A beautiful sunset over mountains",
                                                "platforms": ["instagram-post", "twitter-post"], "imageType": "vivid"})
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["jobId"]
    done = wait_final(client, job_id)
    assert done["state"] == "succeeded", done
    out = result(client, job_id)
    assert out["success"] and out["totalImages"] == 2 and out["generationId"] == job_id
    assert [(i["platform"], i["width"], i["height"]) for i in out["images"]] == [
        ("instagram-square", 1080, 1080), ("twitter-post", 1600, 900)]
    for item in out["images"]:
        img = stored(rt, item["key"])
        assert (img.format, img.size) == ("JPEG", (item["width"], item["height"]))
        assert item["url"].startswith("file://") and item["key"].startswith(f"generated/user-123/{job_id}/")
    [sent] = openai_api.requests
    assert sent["style"] == "vivid" and sent["user"] == "user-123" and sent["response_format"] == "b64_json"
    assert "b64" not in json.dumps(out)  # references, never bytes
    progress = [e["progress"]["message"] for e in client.get(f"/api/jobs/{job_id}/events").get_json()["events"]
                if e["kind"] == "progress"]
    assert "stored instagram-square (1080x1080)" in progress and "stored twitter-post (1600x900)" in progress


def test_every_platform_variant_is_stored_in_supabase_with_a_public_url(rt, monkeypatch, worker, client, openai_api):
    with FakeSupabase() as supa:
        use_settings(rt, monkeypatch, storage_backend="supabase", supabase_url=supa.url, supabase_key=supa.key)
        job = submit(client, "images.generate", {"prompt": "a lighthouse", "platforms": sorted(PLATFORMS),
                                                 "format": "webp", "size": "1792x1024"})
        done = wait_final(client, job["id"], timeout=30)
        assert done["state"] == "succeeded", done
        out = result(client, job["id"])
        import requests

        for item in out["images"]:
            p = PLATFORMS[item["platform"]]
            img = open_image(requests.get(item["url"], timeout=5).content)
            assert (img.format, img.size) == ("WEBP", (p.width, p.height)), item["platform"]
            assert item["backend"] == "supabase"
        assert ("conveyor", out["original"]["key"]) in supa.objects


def test_a_provider_answering_with_a_url_is_downloaded_through_the_guarded_helper(rt, monkeypatch, worker, client,
                                                                                 openai_api):
    use_settings(rt, monkeypatch, openai_image_model="gpt-image-1")
    job = submit(client, "images.generate", {"prompt": "a cat", "platforms": ["instagram-story"], "format": "png"})
    assert wait_final(client, job["id"])["state"] == "succeeded"
    assert "response_format" not in openai_api.requests[0]
    [item] = result(client, job["id"])["images"]
    img = stored(rt, item["key"])
    assert (img.format, img.size) == ("PNG", (1080, 1920))


def test_a_rate_limited_generation_is_retried_after_retry_after(worker, client, openai_api):
    openai_api.fail_next.append((429, {"Retry-After": "1"}))
    started = time.monotonic()
    job = submit(client, "images.generate", {"prompt": "a fox", "platforms": ["linkedin"]})
    done = wait_final(client, job["id"])
    assert done["state"] == "succeeded" and done["attempts"] == 2
    assert time.monotonic() - started >= 0.9
    assert done["history"][0]["error_type"] == "RetryJob" and "429" in done["history"][0]["error_message"]


def test_a_provider_server_error_is_retried_after_retry_after_ms(worker, client, openai_api):
    openai_api.fail_next.append((500, {"retry-after-ms": "200"}))
    job = submit(client, "images.generate", {"prompt": "a fox", "platforms": ["pinterest"]})
    done = wait_final(client, job["id"], timeout=20)
    assert done["state"] == "succeeded" and done["attempts"] == 2


def test_a_content_policy_refusal_fails_at_once_with_a_clear_error(worker, client, openai_api):
    job = submit(client, "images.generate", {"prompt": "something [policy]", "platforms": ["facebook"]})
    done = wait_final(client, job["id"])
    assert done["state"] == "failed" and done["attempts"] == 1
    assert done["error"]["type"] == "PermanentJobError"
    assert "content_policy_violation" in done["error"]["message"]


def test_a_wrong_or_missing_openai_key_fails_without_showing_the_key(rt, monkeypatch, worker, client, openai_api):
    use_settings(rt, monkeypatch, openai_api_key="sk-wrong-key-123")
    job = submit(client, "images.generate", {"prompt": "x"})
    done = wait_final(client, job["id"])
    assert done["state"] == "failed" and "401" in done["error"]["message"]
    assert "sk-wrong-key-123" not in json.dumps(done)
    use_settings(rt, monkeypatch, openai_api_key="")
    done = wait_final(client, submit(client, "images.generate", {"prompt": "x"})["id"])
    assert done["state"] == "failed" and "CONVEYOR_OPENAI_API_KEY" in done["error"]["message"]


def test_generate_payloads_are_validated_at_submit(client):
    for bad in ({}, {"prompt": "x", "platforms": ["myspace"]}, {"prompt": "x", "size": "5x5"},
                {"prompt": "x", "userId": "../../etc"}):
        assert client.post("/api/jobs", json={"type": "images.generate", "payload": bad}).status_code == 400, bad


def test_resize_from_a_stored_key_makes_every_size_in_every_format(rt, worker, client, storage_dir):
    storage_for(rt.settings).put("uploads/photo.jpg", image_bytes(1200, 800, "JPEG"), "image/jpeg")
    job = submit(client, "images.resize", {"key": "uploads/photo.jpg", "formats": ["jpeg", "png", "webp"], "sizes": [
        {"width": 300, "height": 300, "mode": "cover", "name": "square"},
        {"width": 400, "height": 400, "mode": "contain"},
        {"width": 500, "height": 200, "mode": "pad"}]})
    done = wait_final(client, job["id"])
    assert done["state"] == "succeeded", done
    out = result(client, job["id"])
    assert (out["source_width"], out["source_height"]) == (1200, 800)
    expected = {"square": (300, 300), "400x400": (400, 267), "500x200": (500, 200)}
    assert len(out["images"]) == 9
    for item in out["images"]:
        img = stored(rt, item["key"])
        assert img.size == expected[item["name"]] == (item["width"], item["height"])
        assert img.format == {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[item["format"]]
        assert (storage_dir / item["key"]).is_file()


def test_resize_from_a_url_applies_exif_orientation(rt, worker, client, storage_dir, files):
    files.files["/phone.jpg"] = (image_bytes(800, 400, "JPEG", exif_orientation=6), "image/jpeg")
    job = submit(client, "images.resize", {"url": files.url + "/phone.jpg", "sizes": [{"width": 100, "height": 100,
                                                                                       "mode": "contain"}]})
    assert wait_final(client, job["id"])["state"] == "succeeded"
    out = result(client, job["id"])
    assert (out["source_width"], out["source_height"]) == (400, 800)  # upright portrait
    assert stored(rt, out["images"][0]["key"]).size == (50, 100)


def test_thumbnails_keep_the_aspect_ratio_and_are_never_enlarged(rt, worker, client, storage_dir, files):
    files.files["/wide.png"] = (image_bytes(640, 320), "image/png")
    job = submit(client, "images.thumbnail", {"url": files.url + "/wide.png", "sizes": [64, 256, 1024]})
    assert wait_final(client, job["id"])["state"] == "succeeded"
    sizes = [(stored(rt, i["key"]).format, stored(rt, i["key"]).size) for i in result(client, job["id"])["images"]]
    assert sizes == [("WEBP", (64, 32)), ("WEBP", (256, 128)), ("WEBP", (640, 320))]
    square = submit(client, "images.thumbnail", {"url": files.url + "/wide.png", "sizes": [100], "square": True,
                                                 "format": "jpg"})
    assert wait_final(client, square["id"])["state"] == "succeeded"
    [item] = result(client, square["id"])["images"]
    assert (stored(rt, item["key"]).format, stored(rt, item["key"]).size) == ("JPEG", (100, 100))


def test_a_decompression_bomb_or_an_oversized_input_fails_the_job_at_once(rt, monkeypatch, worker, client,
                                                                         storage_dir, files):
    from tests.unit.test_imaging import _png_header_only

    files.files["/bomb.png"] = (_png_header_only(12_000, 12_000), "image/png")
    files.files["/big.png"] = (image_bytes(300, 300), "image/png")
    use_settings(rt, monkeypatch, image_max_pixels=50_000_000, image_max_input_bytes=50_000)
    bomb = submit(client, "images.thumbnail", {"url": files.url + "/bomb.png"})
    use_settings(rt, monkeypatch, image_max_input_bytes=100)
    big = submit(client, "images.thumbnail", {"url": files.url + "/big.png"})
    bomb, big = wait_final(client, bomb["id"]), wait_final(client, big["id"])
    assert bomb["state"] == "failed" and bomb["attempts"] == 1 and "pixel limit" in bomb["error"]["message"]
    assert big["state"] == "failed" and big["attempts"] == 1 and "limit" in big["error"]["message"]


def test_a_missing_source_fails_and_an_unavailable_one_is_retried(worker, client, storage_dir, files):
    missing_key = submit(client, "images.resize", {"key": "nope/none.png", "sizes": [{"width": 1, "height": 1}]})
    missing_url = submit(client, "images.resize", {"url": files.url + "/none.png",
                                                   "sizes": [{"width": 1, "height": 1}]})
    flaky = submit(client, "images.resize", {"url": files.url + "/status/503", "sizes": [{"width": 1, "height": 1}]},
                   max_retries=1)
    for job in (missing_key, missing_url):
        done = wait_final(client, job["id"])
        assert done["state"] == "failed" and done["attempts"] == 1 and done["error"]["type"] == "PermanentJobError"
    done = wait_final(client, flaky["id"])
    assert done["state"] == "failed" and done["attempts"] == 2 and done["error"]["type"] == "RetryJob"


def test_resize_payloads_are_validated_at_submit(client):
    for bad in ({"sizes": [{"width": 1, "height": 1}]},
                {"key": "a.png", "url": "http://127.0.0.1/a.png", "sizes": [{"width": 1, "height": 1}]},
                {"key": "../a.png", "sizes": [{"width": 1, "height": 1}]},
                {"url": "file:///etc/passwd", "sizes": [{"width": 1, "height": 1}]},
                {"key": "a.png", "sizes": [{"width": 0, "height": 1}]},
                {"key": "a.png", "sizes": [{"width": 10, "height": 10}], "formats": ["gif"]}):
        assert client.post("/api/jobs", json={"type": "images.resize", "payload": bad}).status_code == 400, bad


def test_one_shared_payload_schema_validates_correctly_from_many_threads_at_once(rt):
    # Each job type keeps one marshmallow schema instance for every thread (see JobType.loader).
    import threading

    from service.errors import InvalidPayload

    jt = rt.registry.get("images.resize")
    problems: list[object] = []

    def hammer(i: int) -> None:
        for k in range(400):
            width = 10 + (i * 7 + k) % 500
            good = {"key": f"in/{i}-{k}.png", "sizes": [{"width": width, "height": width + 1}], "formats": ["png"]}
            out = jt.validate(good)
            if (out["key"], out["sizes"][0]["width"]) != (f"in/{i}-{k}.png", width):
                problems.append(out)
            try:
                jt.validate({"key": "a.png", "url": "http://x/y.png", "sizes": "x"})
                problems.append("a bad payload passed")
            except InvalidPayload:
                pass

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
