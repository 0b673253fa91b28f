"""Storage for the files jobs read and produce: a local directory (the embedded default) or Supabase storage.

Jobs never put file bytes in messages, job records or results: they store the bytes here and pass
:class:`StoredObject` references (backend, key, URL, size, content type). Keys are relative, ``/``-separated
paths of safe characters (``images/<job id>/instagram-square.jpg``).

Errors::

    StorageError
    ├── InvalidKey           the key is empty, absolute, has ``..`` or unusual characters
    ├── ObjectNotFound
    └── StorageUnavailable   the backend failed or timed out (worth retrying)
"""

from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.config import Settings
from service.errors import ConfigError

__all__ = [
    "Storage", "LocalStorage", "SupabaseStorage", "StoredObject", "storage_for",
    "StorageError", "InvalidKey", "ObjectNotFound", "StorageUnavailable", "check_key",
]

logger = logging.getLogger(__name__)

#: What a key may look like: relative path segments of letters, digits, ``._-``, at most 512 characters.
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")
MAX_KEY_CHARS = 512


class StorageError(Exception):
    """Base of storage errors."""


class InvalidKey(StorageError):
    """Raised when a key is not a safe relative path."""


class ObjectNotFound(StorageError):
    """Raised when no object is stored under a key."""


class StorageUnavailable(StorageError):
    """Raised when the storage backend cannot be reached or answers with a server error."""


@dataclass(frozen=True)
class StoredObject:
    """A reference to a stored file: what results carry instead of bytes."""

    backend: str
    key: str
    url: str
    size_bytes: int
    content_type: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative path, else raise InvalidKey."""
    if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or not _KEY_RE.match(key) or ".." in key.split("/"):
        raise InvalidKey(f"invalid storage key {key!r}: use a relative path of letters, digits, '._-' and '/'")
    return key


class Storage(ABC):
    """A place to put, read and delete files by key."""

    name: str = "storage"

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Store ``data`` under ``key`` (replacing what was there) and return its reference."""

    @abstractmethod
    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The bytes stored under ``key``; ObjectNotFound if none, StorageError if over ``max_bytes``."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete ``key``; True if something was deleted."""

    @abstractmethod
    def url(self, key: str) -> str:
        """A URL a client can fetch the object from."""


class LocalStorage(Storage):
    """Files under a directory. URLs are ``file://`` unless a public base URL (a web server on the
    directory) is configured. Writes go to a temporary file that is renamed, so readers never see half a file."""

    name = "local"

    def __init__(self, root: str | Path, *, public_base_url: str = "") -> None:
        self.root = Path(root).resolve()
        self.public_base_url = public_base_url.rstrip("/")

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:
            raise InvalidKey(f"invalid storage key {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredObject(self.name, key, self.url(key), len(data), content_type)

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        path = self._path(key)
        try:
            size = path.stat().st_size
            if max_bytes is not None and size > max_bytes:
                raise StorageError(f"object {key!r} is {size} bytes, over the {max_bytes}-byte limit")
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in local storage") from None

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
            return True
        except FileNotFoundError:
            return False

    def url(self, key: str) -> str:
        if self.public_base_url:
            return f"{self.public_base_url}/{check_key(key)}"
        return self._path(key).as_uri()


class SupabaseStorage(Storage):
    """A Supabase storage bucket through the ``supabase`` client. URLs are the bucket's public URLs, or
    signed URLs valid for ``signed_url_ttl_s`` when the bucket is private."""

    name = "supabase"

    def __init__(self, url: str, key: str, bucket: str, *, public: bool = True,
                 signed_url_ttl_s: int = 7 * 24 * 3600, timeout_s: float = 30.0) -> None:
        import httpx
        from supabase import ClientOptions, create_client

        if not url or not key:
            raise ConfigError("Supabase storage needs CONVEYOR_SUPABASE_URL and CONVEYOR_SUPABASE_KEY")
        # Our own httpx client: explicit timeouts, no redirects, and no deprecated per-client options.
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=False)
        self._client = create_client(url, key, options=ClientOptions(httpx_client=self._http))
        self.bucket = bucket
        self.public = public
        self.signed_url_ttl_s = signed_url_ttl_s

    def _bucket(self) -> Any:
        return self._client.storage.from_(self.bucket)

    def _call(self, what: str, key: str, fn: Any) -> Any:
        import httpx
        from storage3.exceptions import StorageApiError

        try:
            return fn()
        except StorageApiError as exc:
            status = int(exc.status) if str(exc.status).isdigit() else 500
            if status == 404 or (status == 400 and "not found" in str(exc.message).lower()):
                raise ObjectNotFound(f"no object {key!r} in bucket {self.bucket!r}") from None
            if status >= 500 or status == 429:
                raise StorageUnavailable(f"Supabase storage failed to {what} {key!r}: HTTP {status}") from None
            raise StorageError(f"Supabase storage refused to {what} {key!r}: HTTP {status} {exc.message}") from None
        except httpx.HTTPError as exc:
            raise StorageUnavailable(f"Supabase storage unreachable ({what} {key!r}): {type(exc).__name__}") from None

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        check_key(key)
        self._call("upload", key, lambda: self._bucket().upload(
            key, data, {"content-type": content_type, "upsert": "true", "cache-control": "31536000"}))
        return StoredObject(self.name, key, self.url(key), len(data), content_type)

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        check_key(key)
        data: bytes = self._call("download", key, lambda: self._bucket().download(key))
        if max_bytes is not None and len(data) > max_bytes:
            raise StorageError(f"object {key!r} is {len(data)} bytes, over the {max_bytes}-byte limit")
        return data

    def delete(self, key: str) -> bool:
        check_key(key)
        removed = self._call("delete", key, lambda: self._bucket().remove([key]))
        return bool(removed)

    def url(self, key: str) -> str:
        check_key(key)
        if self.public:
            return str(self._bucket().get_public_url(key))
        signed = self._call("sign", key, lambda: self._bucket().create_signed_url(key, self.signed_url_ttl_s))
        return str(signed.get("signedURL") or signed.get("signedUrl"))


@functools.lru_cache(maxsize=8)
def storage_for(settings: Settings) -> Storage:
    """The storage backend the settings select (one instance per settings)."""
    backend = settings.storage_backend.strip().lower()
    if backend == "local":
        return LocalStorage(settings.storage_dir, public_base_url=settings.storage_public_base_url)
    if backend == "supabase":
        return SupabaseStorage(settings.supabase_url, settings.supabase_key, settings.supabase_bucket,
                               public=settings.supabase_public, signed_url_ttl_s=settings.supabase_signed_url_ttl_s,
                               timeout_s=settings.supabase_timeout_s)
    raise ConfigError(f"CONVEYOR_STORAGE_BACKEND must be 'local' or 'supabase', not {settings.storage_backend!r}")
