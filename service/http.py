"""Outbound HTTP for jobs: every URL a job fetches or posts to (image sources, provider downloads,
webhooks, callbacks) goes through :func:`request`.

Guards: http/https only; a connect/read timeout and an overall deadline; a cap on the response body
(``Content-Length`` checked first, then the decoded bytes counted while streaming, so a gzip bomb is cut
off too); redirects followed by hand, at most ``max_redirects``, each target checked again by
:func:`check_url` - the one place for URL policy, where the SSRF controls live; no proxies or ``.netrc``
from the environment. Response bodies are bytes in memory, so callers pass the cap they can afford.

Errors::

    OutboundError
    ├── BlockedURL          the URL is not allowed (scheme, host, credentials)
    ├── ResponseTooLarge    the body is larger than ``max_bytes``
    ├── TooManyRedirects
    ├── TransportError      connection refused/reset, DNS failure, timeout (worth retrying)
    └── HTTPStatusError     a non-2xx answer; ``status_code`` and ``retry_after_s`` (429/5xx: ``retryable``)
"""

from __future__ import annotations

import email.utils
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

__all__ = [
    "OutboundError", "BlockedURL", "ResponseTooLarge", "TooManyRedirects", "TransportError", "HTTPStatusError",
    "Response", "check_url", "request", "parse_retry_after", "redact_url",
    "DEFAULT_TIMEOUT_S", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_REDIRECTS",
]

logger = logging.getLogger(__name__)

#: Defaults when the caller passes none (jobs pass the values from Settings).
DEFAULT_TIMEOUT_S = 15.0
DEFAULT_MAX_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_REDIRECTS = 3
#: Size of one read from the socket while streaming a body.
CHUNK_BYTES = 64 * 1024
#: Longest ``Retry-After`` honoured; a provider asking for more is retried after this.
MAX_RETRY_AFTER_S = 3600.0
_REDIRECTS = {301, 302, 303, 307, 308}
_SCHEMES = {"http", "https"}
USER_AGENT = "Conveyor/0.1 (+background jobs)"


class OutboundError(Exception):
    """Base of the errors of outbound HTTP. Messages never contain a URL's query string or credentials."""


class BlockedURL(OutboundError):
    """Raised when a URL (or a redirect target) is not allowed by :func:`check_url`."""


class ResponseTooLarge(OutboundError):
    """Raised when a response body is larger than the cap the caller gave."""


class TooManyRedirects(OutboundError):
    """Raised when more redirects than ``max_redirects`` would have to be followed."""


class TransportError(OutboundError):
    """Raised when the request did not get an answer: connection refused or reset, DNS, timeout."""


class HTTPStatusError(OutboundError):
    """Raised by :meth:`Response.raise_for_status` for a non-2xx answer."""

    def __init__(self, message: str, *, status_code: int, retry_after_s: float | None = None,
                 body: bytes = b"") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.body = body

    @property
    def retryable(self) -> bool:
        """429, 408 and 5xx answers may succeed later; other 4xx will not."""
        return self.status_code in (408, 425, 429) or self.status_code >= 500


@dataclass
class Response:
    """A finished response with its whole (capped) body."""

    status_code: int
    headers: dict[str, str]
    content: bytes
    url: str
    elapsed_ms: int
    redirects: list[str] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def raise_for_status(self) -> Response:
        """Return self for 2xx; raise HTTPStatusError otherwise."""
        if 200 <= self.status_code < 300:
            return self
        raise HTTPStatusError(
            f"{redact_url(self.url)} answered HTTP {self.status_code}", status_code=self.status_code,
            retry_after_s=parse_retry_after(self.headers.get("retry-after")), body=self.content[:2000])


def redact_url(url: str) -> str:
    """The URL without credentials, query or fragment, safe for logs and error messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return f"{parts.scheme}://{host}{parts.path}"
    except ValueError:
        return "<invalid url>"


def check_url(url: str) -> str:
    """Return ``url`` if jobs may connect to it, else raise BlockedURL.

    Today: http/https with a host and no user:password part. The SSRF policy (resolved address not
    loopback/private/link-local, allowed ports) belongs here so that it covers every redirect too.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        raise BlockedURL("malformed URL") from None
    if parts.scheme.lower() not in _SCHEMES:
        raise BlockedURL(f"only http and https URLs are allowed, not {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise BlockedURL("the URL has no host")
    if parts.username or parts.password:
        raise BlockedURL("credentials in URLs are not allowed")
    return url


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), capped; None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def request(method: str, url: str, *, json: Any = None, data: bytes | None = None,
            headers: dict[str, str] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
            max_bytes: int = DEFAULT_MAX_BYTES, max_redirects: int = DEFAULT_MAX_REDIRECTS) -> Response:
    """Send one request through the guards and return the response (any status; see raise_for_status).

    ``timeout_s`` bounds each connect and read and the whole exchange including redirects.
    """
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    send_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    redirects: list[str] = []
    with requests.Session() as session:
        session.trust_env = False  # no proxies or .netrc credentials from the environment
        while True:
            check_url(url)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError(f"{redact_url(url)}: timed out after {timeout_s:g}s")
            try:
                resp = session.request(method, url, json=json, data=data, headers=send_headers,
                                       timeout=(min(remaining, timeout_s), min(remaining, timeout_s)),
                                       allow_redirects=False, stream=True)
            except requests.Timeout:
                raise TransportError(f"{redact_url(url)}: timed out after {timeout_s:g}s") from None
            except requests.RequestException as exc:
                raise TransportError(f"{redact_url(url)}: {type(exc).__name__}") from None
            with resp:
                if resp.status_code in _REDIRECTS and resp.headers.get("location"):
                    if len(redirects) >= max_redirects:
                        raise TooManyRedirects(f"{redact_url(url)}: more than {max_redirects} redirects")
                    target = urljoin(url, resp.headers["location"])
                    if urlsplit(target).netloc != urlsplit(url).netloc:
                        send_headers = {k: v for k, v in send_headers.items() if k.lower() != "authorization"}
                    if resp.status_code in (301, 302, 303) and method.upper() != "HEAD":
                        method, json, data = "GET", None, None
                    redirects.append(redact_url(target))
                    url = target
                    continue
                content = _read_capped(resp, url, max_bytes, deadline, timeout_s)
                return Response(status_code=resp.status_code, headers={k.lower(): v for k, v in resp.headers.items()},
                                content=content, url=url, elapsed_ms=int((time.monotonic() - started) * 1000),
                                redirects=redirects)


def _read_capped(resp: requests.Response, url: str, max_bytes: int, deadline: float, timeout_s: float) -> bytes:
    declared = resp.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ResponseTooLarge(f"{redact_url(url)}: body of {int(declared)} bytes is over the {max_bytes}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in resp.iter_content(CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise ResponseTooLarge(f"{redact_url(url)}: body is over the {max_bytes}-byte limit")
            if time.monotonic() > deadline:
                raise TransportError(f"{redact_url(url)}: timed out after {timeout_s:g}s")
            chunks.append(chunk)
    except requests.RequestException as exc:
        raise TransportError(f"{redact_url(url)}: {type(exc).__name__} while reading the body") from None
    return b"".join(chunks)
