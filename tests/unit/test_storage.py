"""service/storage.py: the local directory backend, and Supabase storage through the real ``supabase``
client against a Supabase-compatible stand-in on 127.0.0.1."""

from __future__ import annotations

import pytest
import requests

from service.config import Settings
from service.storage import (
    InvalidKey,
    LocalStorage,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
    SupabaseStorage,
    storage_for,
)
from tests.support.fake_supabase import FakeSupabase


@pytest.fixture
def supa():
    with FakeSupabase() as server:
        yield server


def supabase_storage(server: FakeSupabase, **kw) -> SupabaseStorage:
    return SupabaseStorage(server.url, server.key, "conveyor", timeout_s=5, **kw)


def test_local_storage_round_trips_bytes_and_gives_a_file_url(tmp_path):
    store = LocalStorage(tmp_path)
    obj = store.put("images/a/b.png", b"\x89PNG data", "image/png")
    assert (obj.backend, obj.key, obj.size_bytes, obj.content_type) == ("local", "images/a/b.png", 9, "image/png")
    assert obj.url == (tmp_path / "images/a/b.png").resolve().as_uri()
    assert store.get("images/a/b.png") == b"\x89PNG data"
    assert store.delete("images/a/b.png") is True
    with pytest.raises(ObjectNotFound):
        store.get("images/a/b.png")
    assert store.delete("images/a/b.png") is False


def test_local_storage_urls_use_the_public_base_url_when_one_is_set(tmp_path):
    store = LocalStorage(tmp_path, public_base_url="https://cdn.example.test/files/")
    assert store.put("x/y.jpg", b"1", "image/jpeg").url == "https://cdn.example.test/files/x/y.jpg"


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/path", "a/../../b", "", "a//b", "a/.hidden", "sp ace"])
def test_keys_that_could_escape_the_storage_root_are_refused(tmp_path, key):
    with pytest.raises(InvalidKey):
        LocalStorage(tmp_path).put(key, b"x", "text/plain")


def test_local_storage_refuses_objects_over_the_read_limit(tmp_path):
    store = LocalStorage(tmp_path)
    store.put("big.bin", b"x" * 100, "application/octet-stream")
    with pytest.raises(StorageError, match="limit"):
        store.get("big.bin", max_bytes=99)


def test_supabase_storage_uploads_through_the_real_client_and_gives_a_working_public_url(supa):
    store = supabase_storage(supa)
    obj = store.put("generated/job1/instagram-square.jpg", b"jpeg bytes", "image/jpeg")
    assert supa.objects[("conveyor", "generated/job1/instagram-square.jpg")] == (b"jpeg bytes", "image/jpeg")
    assert obj.url == f"{supa.url}/storage/v1/object/public/conveyor/generated/job1/instagram-square.jpg"
    assert requests.get(obj.url, timeout=5).content == b"jpeg bytes"
    assert store.get("generated/job1/instagram-square.jpg") == b"jpeg bytes"
    # uploading again replaces (upsert)
    store.put("generated/job1/instagram-square.jpg", b"v2", "image/jpeg")
    assert store.get("generated/job1/instagram-square.jpg") == b"v2"


def test_supabase_storage_gives_signed_urls_for_a_private_bucket(supa):
    store = supabase_storage(supa, public=False, signed_url_ttl_s=600)
    obj = store.put("private/report.png", b"png", "image/png")
    assert "/storage/v1/object/sign/conveyor/private/report.png?token=" in obj.url
    assert requests.get(obj.url, timeout=5).content == b"png"


def test_supabase_storage_deletes_and_reports_missing_objects(supa):
    store = supabase_storage(supa)
    store.put("tmp/a.txt", b"a", "text/plain")
    assert store.delete("tmp/a.txt") is True
    assert ("conveyor", "tmp/a.txt") not in supa.objects
    assert store.delete("tmp/a.txt") is False
    with pytest.raises(ObjectNotFound):
        store.get("tmp/a.txt")


def test_supabase_server_errors_are_retryable_and_a_wrong_key_is_not(supa):
    supa.fail_next.append(503)
    with pytest.raises(StorageUnavailable):
        supabase_storage(supa).put("a.txt", b"a", "text/plain")
    bad = SupabaseStorage(supa.url, "wrong-key", "conveyor", timeout_s=5)
    with pytest.raises(StorageError) as info:
        bad.put("a.txt", b"a", "text/plain")
    assert not isinstance(info.value, StorageUnavailable)
    assert "wrong-key" not in str(info.value)


def test_an_unreachable_supabase_is_reported_as_unavailable():
    from tests.support.procs import free_port

    store = SupabaseStorage(f"http://127.0.0.1:{free_port()}", "k", "conveyor", timeout_s=2)
    with pytest.raises(StorageUnavailable):
        store.put("a.txt", b"a", "text/plain")


def test_settings_select_the_backend(tmp_path, supa):
    assert isinstance(storage_for(Settings(storage_dir=str(tmp_path))), LocalStorage)
    s = Settings(storage_backend="supabase", supabase_url=supa.url, supabase_key=supa.key)
    assert isinstance(storage_for(s), SupabaseStorage)
    assert supa.key not in repr(s)
