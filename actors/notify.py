"""Notification job types: ``notify.webhook`` (signed JSON POST) and ``notify.email`` (SMTP), plus the
``callback_url`` hook: a job submitted with a callback URL gets a signed ``notify.webhook`` when it ends.

Signature scheme (docs/job-types.md shows how to verify it)::

    X-Conveyor-Timestamp: <unix seconds>
    X-Conveyor-Signature: v1=<hex HMAC-SHA256(webhook_secret, "<timestamp>.<raw body bytes>")>
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import ssl
import time
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates

from service import http
from service.config import Settings
from service.context import current_job
from service.errors import PermanentJobError, RetryJob
from service.hooks import on_final
from service.jobs import Submission
from service.registry import Backoff, job_type
from service.runtime import get_runtime
from service.state import JobState

__all__ = ["send_webhook", "send_email", "sign", "deliver_callback", "SIGNATURE_HEADER", "TIMESTAMP_HEADER"]

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Conveyor-Signature"
TIMESTAMP_HEADER = "X-Conveyor-Timestamp"
EVENT_HEADER = "X-Conveyor-Event"
DELIVERY_HEADER = "X-Conveyor-Delivery"
#: Headers a payload may not set (they are Conveyor's, or would break the request).
_RESERVED_HEADERS = {h.lower() for h in (SIGNATURE_HEADER, TIMESTAMP_HEADER, EVENT_HEADER, DELIVERY_HEADER,
                                         "content-type", "content-length", "host", "transfer-encoding")}
#: Largest webhook body, serialized.
MAX_WEBHOOK_BODY_BYTES = 256 * 1024
#: Largest job result inlined into a callback body; bigger results are only linked.
MAX_CALLBACK_RESULT_BYTES = 64 * 1024
#: Webhook response bytes read (and kept, at most 500 characters, in errors).
MAX_WEBHOOK_RESPONSE_BYTES = 64 * 1024


def settings() -> Settings:
    """The settings of this process's runtime, read at call time."""
    return get_runtime().settings


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


# -- notify.webhook ------------------------------------------------------------------------------------


class WebhookSchema(Schema):
    url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)
    body = fields.Raw(load_default=dict, metadata={"description": "any JSON value, sent as the request body"})
    event = fields.String(load_default="webhook", validate=validate.Regexp(r"^[A-Za-z0-9_.:-]{1,100}$"))
    headers = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[A-Za-z0-9-]{1,100}$")),
                          values=fields.String(validate=validate.Length(max=2000)), load_default=dict)

    @validates("body")
    def _small(self, value: Any, **_: Any) -> None:
        if len(json.dumps(value, separators=(",", ":"))) > MAX_WEBHOOK_BODY_BYTES:
            raise ValidationError(f"body is over {MAX_WEBHOOK_BODY_BYTES} bytes as JSON")

    @validates("headers")
    def _not_reserved(self, value: dict[str, str], **_: Any) -> None:
        clash = sorted(h for h in value if h.lower() in _RESERVED_HEADERS)
        if clash:
            raise ValidationError(f"these headers are set by Conveyor: {clash}")
        if len(value) > 20:
            raise ValidationError("at most 20 headers")


def _webhook_retryable(exc: BaseException) -> bool:
    return not isinstance(exc, (PermanentJobError, ValidationError))


@job_type("notify.webhook", schema=WebhookSchema, queue="notify", max_retries=5,
          backoff=Backoff(kind="exponential", base_s=2, max_s=600), time_limit_s=120, retryable=_webhook_retryable)
def send_webhook(url: str, body: Any = None, event: str = "webhook",
                 headers: dict[str, str] | None = None) -> dict[str, Any]:
    """POST ``body`` as JSON to ``url``, signed with HMAC-SHA256; 5xx, 429 and timeouts are retried, other 4xx fail."""
    s = settings()
    raw = json.dumps({} if body is None else body, separators=(",", ":"), ensure_ascii=False).encode()
    timestamp = int(time.time())
    send = {**(headers or {}), "Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp),
            EVENT_HEADER: event, DELIVERY_HEADER: getattr(current_job(), "job_id", "") or ""}
    if s.webhook_secret:
        send[SIGNATURE_HEADER] = sign(s.webhook_secret, timestamp, raw)
    target = http.redact_url(url)
    try:
        # Redirects are not followed: a POST that is redirected is ambiguous, and a moved endpoint should be fixed.
        resp = http.request("POST", url, data=raw, headers=send, timeout_s=s.webhook_timeout_s,
                            max_bytes=MAX_WEBHOOK_RESPONSE_BYTES, max_redirects=0)
    except http.TransportError as exc:
        raise RetryJob(f"webhook not delivered: {exc}") from None
    except http.TooManyRedirects:
        raise PermanentJobError(f"webhook not delivered: {target} answered with a redirect") from None
    except http.ResponseTooLarge:
        resp = None  # it answered, and at length: the request was received
    except http.OutboundError as exc:
        raise PermanentJobError(f"webhook not delivered: {exc}") from None
    if resp is not None:
        try:
            resp.raise_for_status()
        except http.HTTPStatusError as exc:
            detail = f"webhook not delivered: {exc}: {exc.body[:200].decode(errors='replace')}"
            if exc.retryable:
                raise RetryJob(detail, delay_s=exc.retry_after_s) from None
            raise PermanentJobError(detail) from None
    logger.info("webhook %s delivered to %s", event, target)
    return {"delivered": True, "status_code": resp.status_code if resp is not None else None,
            "duration_ms": resp.elapsed_ms if resp is not None else None, "signed": bool(s.webhook_secret),
            "event": event}


# -- notify.email --------------------------------------------------------------------------------------


class EmailSchema(Schema):
    to = fields.List(fields.Email(), required=True, validate=validate.Length(min=1, max=50))
    cc = fields.List(fields.Email(), load_default=list, validate=validate.Length(max=50))
    bcc = fields.List(fields.Email(), load_default=list, validate=validate.Length(max=50))
    reply_to = fields.Email(load_default=None, allow_none=True)
    subject = fields.String(required=True, validate=validate.Length(min=1, max=500))
    text = fields.String(required=True, validate=validate.Length(max=1_000_000),
                         metadata={"description": "plain-text body (always sent)"})
    html = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2_000_000),
                         metadata={"description": "HTML alternative"})

    @validates("subject")
    def _one_line(self, value: str, **_: Any) -> None:
        if "\r" in value or "\n" in value:
            raise ValidationError("subject must be one line")


def build_email(s: Settings, *, to: list[str], subject: str, text: str, html: str | None = None,
                cc: list[str] | None = None, reply_to: str | None = None) -> EmailMessage:
    """The MIME message: text/plain, plus a text/html alternative when ``html`` is given."""
    msg = EmailMessage()
    msg["From"] = s.smtp_from
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain=s.smtp_from.rpartition("@")[2] or None)
    msg.set_content(text)
    if html:
        msg.add_alternative(html, subtype="html")
    return msg


def _smtp(s: Settings) -> smtplib.SMTP:
    mode = s.smtp_tls.strip().lower()
    if mode not in ("none", "starttls", "ssl"):
        raise PermanentJobError("CONVEYOR_SMTP_TLS must be none, starttls or ssl")
    context = ssl.create_default_context(cafile=s.smtp_ca_file or None)
    if mode == "ssl":
        conn: smtplib.SMTP = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s, context=context)
    else:
        conn = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s)
    try:
        conn.ehlo()
        if mode == "starttls":
            conn.starttls(context=context)
            conn.ehlo()
        if s.smtp_user:
            conn.login(s.smtp_user, s.smtp_password)
    except BaseException:
        conn.close()
        raise
    return conn


@job_type("notify.email", schema=EmailSchema, queue="notify", max_retries=5,
          backoff=Backoff(kind="exponential", base_s=5, max_s=900), time_limit_s=180)
def send_email(to: list[str], subject: str, text: str, html: str | None = None, cc: list[str] | None = None,
               bcc: list[str] | None = None, reply_to: str | None = None) -> dict[str, Any]:
    """Send an e-mail through the configured SMTP server; 4xx answers and connection errors are retried."""
    s = settings()
    msg = build_email(s, to=to, subject=subject, text=text, html=html, cc=cc, reply_to=reply_to)
    recipients = list(dict.fromkeys([*to, *(cc or []), *(bcc or [])]))
    try:
        with _smtp(s) as conn:
            refused = conn.send_message(msg, from_addr=s.smtp_from, to_addrs=recipients)
    except smtplib.SMTPAuthenticationError as exc:
        raise PermanentJobError(f"SMTP server refused the credentials (code {exc.smtp_code})") from None
    except smtplib.SMTPRecipientsRefused as exc:
        codes = {addr: code for addr, (code, _) in exc.recipients.items()}
        if all(400 <= c < 500 for c in codes.values()):
            raise RetryJob(f"SMTP server deferred every recipient: {codes}") from None
        raise PermanentJobError(f"SMTP server refused every recipient: {codes}") from None
    except smtplib.SMTPResponseException as exc:
        reply = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        if 400 <= exc.smtp_code < 500:
            raise RetryJob(f"SMTP server deferred the message: {exc.smtp_code} {reply[:200]}") from None
        raise PermanentJobError(f"SMTP server refused the message: {exc.smtp_code} {reply[:200]}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise RetryJob(f"SMTP server {s.smtp_host}:{s.smtp_port} unreachable: {type(exc).__name__}") from None
    accepted = [r for r in recipients if r not in refused]
    return {"message_id": msg["Message-ID"], "accepted": accepted,
            "refused": {addr: code for addr, (code, _) in refused.items()}}


# -- callback_url on any job ---------------------------------------------------------------------------


def callback_body(job: Any, state: JobState, result: Any = None) -> dict[str, Any]:
    """What a callback tells: the job's identity, final state, error and (small) result."""
    summary = job.to_api()
    out: dict[str, Any] = {
        "event": f"job.{state.value}",
        "job": {k: summary[k] for k in ("id", "type", "queue", "state", "attempts", "created_at", "finished_at",
                                        "error", "result_url", "trace_id")},
    }
    if result is not None:
        encoded = json.dumps(result, separators=(",", ":"), default=str)
        if len(encoded) <= MAX_CALLBACK_RESULT_BYTES:
            out["job"]["result"] = result
    return out


@on_final
def deliver_callback(job_id: str, state: JobState, options: Mapping[str, Any]) -> None:
    """Final-state hook: submit a signed ``notify.webhook`` to the job's ``callback_url``, if it has one."""
    if not options.get("callback_url"):
        return  # most jobs: no Redis read at all
    rt = get_runtime()
    job = rt.store.get(job_id)
    if job is None:
        return
    url = (job.options or {}).get("callback_url")
    if not url:
        return
    result = None
    if state is JobState.SUCCEEDED:
        try:
            result = rt.jobs.result(job_id, job.tenant)
        except Exception:  # the callback still says "succeeded" and links the result
            logger.warning("result of job %s not available for its callback", job_id, exc_info=True)
    body = callback_body(job, state, result)
    cb, _ = rt.jobs.submit(Submission(
        type="notify.webhook", payload={"url": url, "body": body, "event": body["event"]}, tenant=job.tenant,
        # one callback per finished attempt, even if the hook fires twice
        idempotency_key=f"callback:{job_id}:{job.generation}:{state.value}", trace_id=job.trace_id or None,
    ))
    logger.info("callback job %s submitted for job %s (%s)", cb.id, job_id, state.value)
