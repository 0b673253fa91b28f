"""The seed job types through real RabbitMQ and Redis: a `dramatiq actors` worker resizes an image fetched
from a local file server into local storage, and delivers a signed webhook and a job callback."""

from __future__ import annotations

import io

import requests
from PIL import Image

from tests.support.procs import wait_state
from tests.support.standin import FileServer
from tests.support.webhook_receiver import WebhookReceiver

SECRET = "whsec-integration"


def submit(base: str, body: dict) -> dict:
    r = requests.post(f"{base}/api/jobs", json=body, timeout=10)
    assert r.status_code == 202, r.text
    return r.json()


def test_a_real_worker_resizes_an_image_and_delivers_a_signed_webhook_and_callback(api, start_workers, tmp_path):
    storage = tmp_path / "storage"
    source = io.BytesIO()
    Image.new("RGB", (900, 600), (10, 120, 200)).save(source, "JPEG")
    with FileServer() as files, WebhookReceiver(SECRET) as receiver:
        files.files["/in.jpg"] = (source.getvalue(), "image/jpeg")
        start_workers(CONVEYOR_STORAGE_DIR=str(storage), CONVEYOR_WEBHOOK_SECRET=SECRET)

        # Given a resize job with a callback URL, and a plain webhook job
        resize = submit(api, {"type": "images.resize", "callback_url": receiver.url + "/callback", "payload": {
            "url": files.url + "/in.jpg", "formats": ["webp", "png"],
            "sizes": [{"width": 1080, "height": 1350, "mode": "cover", "name": "portrait"}]}})
        hook = submit(api, {"type": "notify.webhook", "payload": {"url": receiver.url + "/hook", "body": {"n": 1}}})

        # Then both succeed, the outputs are real images of the asked size in local storage
        wait_state(api, resize["id"], "succeeded")
        wait_state(api, hook["id"], "succeeded")
        result = requests.get(f"{api}/api/jobs/{resize['id']}/result", timeout=5).json()["result"]
        formats = set()
        for item in result["images"]:
            img = Image.open(storage / item["key"])
            assert img.size == (1080, 1350)
            formats.add(img.format)
        assert formats == {"WEBP", "PNG"}

        # And the receiver got the webhook and the callback, both correctly signed
        deliveries = {d.path: d for d in receiver.wait_for(2, timeout=20)}
        assert deliveries["/hook"].verified and deliveries["/hook"].json == {"n": 1}
        callback = deliveries["/callback"]
        assert callback.verified and callback.json["event"] == "job.succeeded"
        assert callback.json["job"]["id"] == resize["id"]
        assert callback.json["job"]["result"]["images"][0]["key"] == result["images"][0]["key"]


def test_conveyor_dev_with_no_configuration_resizes_a_stored_image_on_local_storage(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.support.procs import free_port, wait_for

    # Given `conveyor dev` started in an empty directory with no CONVEYOR_* variable at all
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    port = free_port()
    upload = tmp_path / "var" / "storage" / "uploads" / "cat.png"
    upload.parent.mkdir(parents=True)
    Image.new("RGB", (640, 480), (200, 50, 50)).save(upload, "PNG")
    log = open(tmp_path / "dev.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(Path(sys.executable).parent / "conveyor"), "dev", "--port", str(port)], env=env,
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "dev.log").read_text()
            try:
                return requests.get(base + "/health", timeout=1).status_code in (200, 503)
            except requests.ConnectionError:
                return False

        wait_for(up, timeout=30, what="conveyor dev")
        # When an images.resize job names the stored picture
        job = submit(base, {"type": "images.resize", "payload": {
            "key": "uploads/cat.png", "sizes": [{"width": 200, "height": 200, "name": "avatar"}]}})
        wait_state(base, job["id"], "succeeded")
        # Then the output is in ./var/storage, and the start-up log says what to set for OpenAI and Supabase
        [item] = requests.get(f"{base}/api/jobs/{job['id']}/result", timeout=5).json()["result"]["images"]
        out = Image.open(tmp_path / "var" / "storage" / item["key"])
        assert (out.format, out.size) == ("JPEG", (200, 200))
        startup = (tmp_path / "dev.log").read_text()
        assert "CONVEYOR_OPENAI_API_KEY" in startup and "CONVEYOR_SUPABASE_URL" in startup
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
