"""Configuration: the one place that reads ``os.environ``.

Every setting has an embedded default, so ``conveyor dev`` runs with nothing set. Durations carry their
unit in the name (``_s``, ``_ms``). Secrets are kept out of ``repr`` so a logged ``Settings`` leaks nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from service.errors import ConfigError

__all__ = ["Settings", "MEMORY_URL"]

#: URL that selects the embedded broker (StubBroker) or the embedded store (fakeredis).
MEMORY_URL = "memory://"


def _secret() -> str:
    return field(default="", repr=False)


@dataclass(frozen=True)
class Settings:
    """Everything Conveyor can be told. Build it with :meth:`from_env`; pass it down, never re-read env."""

    #: ``amqp://user:pass@host:5672/vhost`` or ``memory://`` for the embedded StubBroker.
    broker_url: str = field(default=MEMORY_URL, repr=False)
    #: ``redis://host:6379/0`` or ``memory://`` for the embedded fakeredis store.
    redis_url: str = field(default=MEMORY_URL, repr=False)
    #: Prefix of every Redis key Conveyor writes, so several deployments can share one Redis.
    key_prefix: str = "conveyor"
    #: Python modules imported to register job types (comma separated in the environment).
    job_modules: tuple[str, ...] = ("actors",)
    #: How long Dramatiq's result backend keeps a return value.
    result_ttl_s: int = 24 * 3600
    #: How long a finished job's record, events and indexes are kept.
    job_ttl_s: int = 7 * 24 * 3600
    #: Highest AMQP priority; queues are declared with ``x-max-priority`` of this value.
    max_priority: int = 9
    #: Messages a worker process prefetches per queue; 0 = its thread count, so that RabbitMQ priorities
    #: really order everything that has not started yet.
    queue_prefetch: int = 0
    #: Seconds between two looks of the promoter at the scheduled set (delays and retry backoffs).
    promote_interval_s: float = 0.2
    #: A worker that has not reported for this long is not counted as alive by /health.
    worker_stale_s: float = 30.0
    #: Redeliveries of a running job (its worker died) tolerated before the job is failed as a poison pill.
    max_crash_redeliveries: int = 3
    #: Events kept in the global event stream (approximate MAXLEN).
    event_stream_maxlen: int = 100_000
    #: Events kept per job.
    job_event_maxlen: int = 500
    #: Live events buffered per WebSocket/SSE client; a client that falls further behind is disconnected.
    live_buffer_events: int = 1000
    #: Seconds between WebSocket pings (and SSE keep-alive comments) on an idle live connection.
    live_ping_interval_s: float = 25.0
    #: Seconds between two looks at the job counts for ``stats`` subscribers (sent only on change).
    live_stats_interval_s: float = 1.0
    #: Largest message a WebSocket client may send.
    ws_max_message_bytes: int = 64 * 1024
    #: Largest accepted request body.
    max_body_bytes: int = 1024 * 1024
    #: Redis connections a process opens at most; a caller beyond that waits (up to io_timeout_s) for one.
    redis_max_connections: int = 256
    #: Timeout for broker and Redis operations on the request path.
    io_timeout_s: float = 5.0
    #: Address ``conveyor dev`` and ``conveyor api`` listen on.
    host: str = "127.0.0.1"
    port: int = 8000
    #: gunicorn worker processes and threads per process of ``conveyor api``.
    api_workers: int = 2
    api_threads: int = 32
    log_level: str = "INFO"
    #: Worker threads of the in-process worker under ``conveyor dev``.
    dev_worker_threads: int = 4
    #: Storage backend for file-producing jobs: ``local`` or ``supabase``.
    storage_backend: str = "local"
    #: Root directory of the ``local`` storage backend.
    storage_dir: str = "var/storage"
    #: Base URL under which ``storage_dir`` is served (e.g. by a CDN or nginx); empty: ``file://`` URLs.
    storage_public_base_url: str = ""
    #: Supabase project URL (``https://<project>.supabase.co``) and service-role key.
    supabase_url: str = ""
    supabase_key: str = _secret()
    supabase_bucket: str = "conveyor"
    #: True: results carry the bucket's public URL; False: a signed URL valid for ``supabase_signed_url_ttl_s``.
    supabase_public: bool = True
    supabase_signed_url_ttl_s: int = 7 * 24 * 3600
    #: Timeout of one Supabase storage request.
    supabase_timeout_s: float = 30.0
    #: OpenAI-compatible API base URL (empty: the OpenAI default) and key.
    openai_base_url: str = ""
    openai_api_key: str = _secret()
    #: Image model for ``images.generate``.
    openai_image_model: str = "dall-e-3"
    #: Timeout of one image-generation request.
    openai_timeout_s: float = 120.0
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_user: str = ""
    smtp_password: str = _secret()
    #: ``none``, ``starttls`` or ``ssl`` (implicit TLS, usually port 465).
    smtp_tls: str = "none"
    smtp_from: str = "conveyor@localhost"
    #: CA bundle (PEM) that signs the SMTP server's certificate, for private relays; empty: the system CAs.
    smtp_ca_file: str = ""
    smtp_timeout_s: float = 30.0
    #: HMAC-SHA256 key of webhook and callback signatures; empty: webhooks are sent unsigned.
    webhook_secret: str = _secret()
    #: Timeout of one webhook delivery (connect + read).
    webhook_timeout_s: float = 10.0
    #: Outbound HTTP (service/http.py): default timeout, largest response body, redirects followed.
    http_timeout_s: float = 15.0
    http_max_response_bytes: int = 25 * 1024 * 1024
    http_max_redirects: int = 3
    #: Image inputs: largest accepted file and pixel count (larger images are refused as decompression bombs).
    image_max_input_bytes: int = 25 * 1024 * 1024
    image_max_pixels: int = 50_000_000

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url == MEMORY_URL

    @property
    def embedded_store(self) -> bool:
        return self.redis_url == MEMORY_URL

    def integration_notes(self) -> list[str]:
        """One line per external integration: what it uses now, or what to set to turn it on (no secrets)."""
        notes = []
        if self.storage_backend == "supabase":
            notes.append(f"storage: Supabase bucket {self.supabase_bucket!r} at {self.supabase_url}")
        else:
            notes.append(f"storage: local directory {self.storage_dir!r} (for Supabase set CONVEYOR_STORAGE_BACKEND="
                         "supabase, CONVEYOR_SUPABASE_URL, CONVEYOR_SUPABASE_KEY, CONVEYOR_SUPABASE_BUCKET)")
        if self.openai_api_key:
            where = self.openai_base_url or "api.openai.com"
            notes.append(f"images.generate: model {self.openai_image_model} at {where}")
        else:
            notes.append("images.generate: off until CONVEYOR_OPENAI_API_KEY is set "
                         "(CONVEYOR_OPENAI_BASE_URL for an OpenAI-compatible provider)")
        notes.append(f"notify.email: SMTP {self.smtp_host}:{self.smtp_port} tls={self.smtp_tls} "
                     "(CONVEYOR_SMTP_HOST/PORT/TLS/USER/PASSWORD/FROM)")
        if not self.webhook_secret:
            notes.append("notify.webhook and callbacks: unsigned until CONVEYOR_WEBHOOK_SECRET is set")
        return notes

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``CONVEYOR_<FIELD>`` variables. Raises ConfigError on a malformed value."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get("CONVEYOR_" + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(f.name, f.default, raw)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def _parse(name: str, default: object, raw: str) -> object:
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
    except ValueError:
        raise ConfigError(f"CONVEYOR_{name.upper()} must be a {type(default).__name__}") from None
    return raw
