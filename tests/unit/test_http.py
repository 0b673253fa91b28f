"""service/http.py: the guarded outbound HTTP helper, against a local file server."""

from __future__ import annotations

import pytest

from service import http
from tests.support.standin import FileServer


@pytest.fixture
def files():
    with FileServer() as server:
        server.files["/small.txt"] = (b"hello", "text/plain")
        server.files["/big.bin"] = (b"x" * 10_000, "application/octet-stream")
        yield server


def test_a_get_returns_the_body_and_headers(files):
    resp = http.request("GET", files.url + "/small.txt").raise_for_status()
    assert (resp.status_code, resp.content, resp.content_type) == (200, b"hello", "text/plain")


def test_bodies_over_the_cap_are_refused(files):
    with pytest.raises(http.ResponseTooLarge):
        http.request("GET", files.url + "/big.bin", max_bytes=9_999)


def test_redirects_are_followed_up_to_the_limit_and_each_target_is_checked(files):
    resp = http.request("GET", f"{files.url}/redirect?to=/small.txt").raise_for_status()
    assert resp.content == b"hello" and resp.redirects == [f"{files.url}/small.txt"]
    with pytest.raises(http.TooManyRedirects):
        http.request("GET", f"{files.url}/redirect?to=/small.txt", max_redirects=0)
    with pytest.raises(http.BlockedURL):
        http.request("GET", f"{files.url}/redirect?to=file:///etc/passwd")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO", "ftp://x/y",
                                 "http://user:pw@127.0.0.1/", "http:///nohost"])
def test_only_plain_http_and_https_urls_are_allowed(url):
    with pytest.raises(http.BlockedURL):
        http.request("GET", url)


def test_status_errors_say_whether_a_retry_can_help_and_honour_retry_after(files):
    with pytest.raises(http.HTTPStatusError) as info:
        http.request("GET", files.url + "/status/503?token=secret").raise_for_status()
    assert info.value.retryable and info.value.retry_after_s == 1.0
    assert "secret" not in str(info.value)
    with pytest.raises(http.HTTPStatusError) as info:
        http.request("GET", files.url + "/status/404").raise_for_status()
    assert not info.value.retryable


def test_connection_failures_are_transport_errors():
    from tests.support.procs import free_port

    with pytest.raises(http.TransportError):
        http.request("GET", f"http://127.0.0.1:{free_port()}/", timeout_s=2)


def test_retry_after_accepts_seconds_and_http_dates():
    assert http.parse_retry_after("7") == 7.0
    assert http.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 60) == 60.0
    assert http.parse_retry_after("soon") is None and http.parse_retry_after(None) is None
    assert http.parse_retry_after("999999") == http.MAX_RETRY_AFTER_S
