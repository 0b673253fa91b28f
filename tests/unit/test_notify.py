"""notify.webhook, notify.email and the callback_url hook, run by the embedded worker against a webhook
receiver and an SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from tests.support.jobs import result, submit, use_settings, wait_final
from tests.support.smtp import SMTPServer
from tests.support.webhook_receiver import WebhookReceiver, verify

SECRET = "whsec-unit-test-secret"


@pytest.fixture
def receiver(rt, monkeypatch):
    use_settings(rt, monkeypatch, webhook_secret=SECRET, webhook_timeout_s=2.0)
    with WebhookReceiver(SECRET) as server:
        yield server


def test_a_webhook_is_posted_as_json_with_a_valid_signature(worker, client, receiver):
    job = submit(client, "notify.webhook", {"url": receiver.url + "/hooks/in", "body": {"order": 42, "ok": True},
                                            "event": "order.paid", "headers": {"X-Tenant": "acme"}})
    done = wait_final(client, job["id"])
    assert done["state"] == "succeeded", done
    [delivery] = receiver.deliveries
    assert delivery.verified and delivery.path == "/hooks/in"
    assert delivery.json == {"order": 42, "ok": True}
    assert delivery.headers["x-conveyor-event"] == "order.paid"
    assert delivery.headers["x-conveyor-delivery"] == job["id"]
    assert delivery.headers["x-tenant"] == "acme"
    assert result(client, job["id"])["status_code"] == 200


def test_a_webhook_with_a_bad_signature_is_rejected_by_the_receiver(rt, monkeypatch, worker, client):
    use_settings(rt, monkeypatch, webhook_secret="some-other-secret")
    with WebhookReceiver(SECRET) as server:
        job = submit(client, "notify.webhook", {"url": server.url, "body": {"a": 1}})
        done = wait_final(client, job["id"])
    assert done["state"] == "failed" and done["attempts"] == 1  # 401 is final
    assert not server.deliveries[0].verified
    assert "401" in done["error"]["message"]
    assert "some-other-secret" not in json.dumps(done)


def test_the_signature_covers_the_timestamp_so_a_replayed_old_request_is_rejected(worker, client, receiver):
    job = submit(client, "notify.webhook", {"url": receiver.url, "body": {"a": 1}})
    wait_final(client, job["id"])
    d = receiver.deliveries[0]
    assert verify(SECRET, d.headers, d.body)
    assert not verify(SECRET, d.headers, d.body + b" ")
    assert not verify(SECRET, d.headers, d.body, now=int(d.headers["x-conveyor-timestamp"]) + 3600)


def test_a_webhook_answered_with_5xx_is_retried_after_retry_after_and_then_succeeds(worker, client, receiver):
    receiver.statuses = [503]
    job = submit(client, "notify.webhook", {"url": receiver.url, "body": {"n": 1}})
    done = wait_final(client, job["id"])
    assert done["state"] == "succeeded" and done["attempts"] == 2
    assert done["history"][0]["error_type"] == "RetryJob"
    first, second = receiver.deliveries
    assert first.body == second.body and second.verified


def test_a_webhook_answered_with_4xx_fails_at_once(worker, client, receiver):
    receiver.statuses = [422]
    job = submit(client, "notify.webhook", {"url": receiver.url, "body": {}})
    done = wait_final(client, job["id"])
    assert done["state"] == "failed" and done["attempts"] == 1
    assert done["error"]["type"] == "PermanentJobError" and "HTTP 422" in done["error"]["message"]


def test_a_webhook_that_times_out_is_retried(rt, monkeypatch, worker, client, receiver):
    use_settings(rt, monkeypatch, webhook_timeout_s=0.3)
    receiver.delay_s = 1.0
    job = submit(client, "notify.webhook", {"url": receiver.url, "body": {}}, max_retries=0)
    done = wait_final(client, job["id"])
    assert done["state"] == "failed" and done["error"]["type"] == "RetryJob"
    assert "timed out" in done["error"]["message"]


def test_webhook_payloads_are_checked_at_submit(client):
    for bad in ({"url": "file:///etc/passwd"}, {"body": {}},
                {"url": "http://127.0.0.1/x", "headers": {"X-Conveyor-Signature": "v1=0"}}):
        r = client.post("/api/jobs", json={"type": "notify.webhook", "payload": bad})
        assert r.status_code == 400, bad


def test_an_email_is_sent_as_plain_text_with_an_html_alternative(rt, monkeypatch, worker, client):
    with SMTPServer(user="mailer", password="s3cret") as smtp:
        use_settings(rt, monkeypatch, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_user="mailer",
                     smtp_password="s3cret", smtp_from="Conveyor <noreply@conveyor.test>")
        job = submit(client, "notify.email", {"to": ["ada@example.com"], "bcc": ["audit@example.com"],
                                              "subject": "Welcome to Synapse!", "text": "Hello Ada",
                                              "html": "<h1>Welcome Ada!</h1>"})
        done = wait_final(client, job["id"])
    assert done["state"] == "succeeded", done
    [got] = smtp.messages
    assert set(got.rcpt_tos) == {"ada@example.com", "audit@example.com"}
    assert got.message["Subject"] == "Welcome to Synapse!" and "Bcc" not in got.message
    assert got.message.get_body(("plain",)).get_content().strip() == "Hello Ada"
    assert got.message.get_body(("html",)).get_content().strip() == "<h1>Welcome Ada!</h1>"
    assert result(client, job["id"])["accepted"] == ["ada@example.com", "audit@example.com"]
    assert "s3cret" not in json.dumps(done)


def test_an_email_goes_over_starttls_with_credentials_when_configured(rt, monkeypatch, worker, client, tmp_path):
    with SMTPServer(user="mailer", password="s3cret", tls_dir=tmp_path) as smtp:
        use_settings(rt, monkeypatch, smtp_port=smtp.port, smtp_tls="starttls", smtp_ca_file=smtp.ca_file,
                     smtp_user="mailer", smtp_password="s3cret")
        job = submit(client, "notify.email", {"to": ["a@example.com"], "subject": "over TLS", "text": "t"})
        done = wait_final(client, job["id"])
        assert done["state"] == "succeeded", done
        assert smtp.messages[0].message["Subject"] == "over TLS"
        # without trusting its certificate the client refuses the server (and retries later)
        use_settings(rt, monkeypatch, smtp_ca_file="")
        job = submit(client, "notify.email", {"to": ["a@example.com"], "subject": "s", "text": "t"}, max_retries=0)
        done = wait_final(client, job["id"])
        assert done["state"] == "failed" and "SSLCertVerificationError" in done["error"]["message"]


def test_wrong_smtp_credentials_fail_the_email_without_retries(rt, monkeypatch, worker, client):
    with SMTPServer(user="mailer", password="right") as smtp:
        use_settings(rt, monkeypatch, smtp_port=smtp.port, smtp_user="mailer", smtp_password="wrong")
        job = submit(client, "notify.email", {"to": ["a@example.com"], "subject": "s", "text": "t"})
        done = wait_final(client, job["id"])
    assert done["state"] == "failed" and done["attempts"] == 1
    assert "credentials" in done["error"]["message"] and "wrong" not in done["error"]["message"]


def test_a_refused_recipient_fails_and_a_deferred_one_is_retried(rt, monkeypatch, worker, client):
    with SMTPServer() as smtp:
        use_settings(rt, monkeypatch, smtp_port=smtp.port, smtp_user="")
        smtp.refuse.add("gone@example.com")
        smtp.defer.add("busy@example.com")
        refused = submit(client, "notify.email", {"to": ["gone@example.com"], "subject": "s", "text": "t"})
        deferred = submit(client, "notify.email", {"to": ["busy@example.com"], "subject": "s", "text": "t"},
                          max_retries=0)
        refused, deferred = wait_final(client, refused["id"]), wait_final(client, deferred["id"])
    assert refused["error"]["type"] == "PermanentJobError" and "550" in refused["error"]["message"]
    assert deferred["error"]["type"] == "RetryJob" and "451" in deferred["error"]["message"]


def test_an_email_subject_with_a_line_break_is_refused_at_submit(client):
    r = client.post("/api/jobs", json={"type": "notify.email", "payload": {
        "to": ["a@example.com"], "subject": "hi\r\nBcc: victim@example.com", "text": "x"}})
    assert r.status_code == 400


def test_a_job_with_a_callback_url_gets_a_signed_callback_with_its_result(worker, client, receiver):
    job = submit(client, "echo", {"hello": "world"}, callback_url=receiver.url + "/done")
    wait_final(client, job["id"])
    [delivery] = receiver.wait_for(1)
    assert delivery.verified and delivery.path == "/done"
    body = delivery.json
    assert body["event"] == "job.succeeded"
    assert body["job"]["id"] == job["id"] and body["job"]["state"] == "succeeded"
    assert body["job"]["result"] == {"hello": "world"}
    assert delivery.headers["x-conveyor-event"] == "job.succeeded"


def test_a_failed_job_callback_carries_its_error(worker, client, receiver):
    job = submit(client, "flaky", {"fail_times": -1, "permanent": True}, callback_url=receiver.url)
    wait_final(client, job["id"])
    [delivery] = receiver.wait_for(1)
    assert delivery.json["event"] == "job.failed"
    assert delivery.json["job"]["error"]["type"] == "PermanentJobError"
    assert "result" not in delivery.json["job"]
