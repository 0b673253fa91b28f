"""The job API under /api: submit, read, list, cancel, retry, results, stats and job types."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from service.errors import InvalidPayload, UnknownJobType
from service.jobs import DEFAULT_TENANT, Submission
from service.runtime import Runtime
from service.state import JobState

bp = Blueprint("api", __name__, url_prefix="/api")

#: Most jobs one bulk request may carry.
MAX_BULK = 1000
#: Submission fields that the generate alias takes from the top level rather than the payload.
ENVELOPE_FIELDS = ("priority", "max_retries", "delay_ms", "idempotency_key", "callback_url")
#: Largest page of a listing.
MAX_LIMIT = 500


class SubmissionSchema(Schema):
    """The envelope of ``POST /api/jobs``; the payload is checked by the job type's own schema."""

    class Meta:
        unknown = RAISE

    type = fields.String(required=True, validate=validate.Length(min=1, max=200))
    payload = fields.Dict(load_default=dict)
    priority = fields.Raw(load_default=None, allow_none=True)
    max_retries = fields.Integer(load_default=None, allow_none=True, strict=True)
    delay_ms = fields.Integer(load_default=None, allow_none=True, strict=True)
    idempotency_key = fields.String(load_default=None, allow_none=True)
    callback_url = fields.Url(load_default=None, allow_none=True, schemes={"http", "https"}, require_tld=False)


class ListQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    state = fields.String(load_default=None, validate=validate.OneOf([s.value for s in JobState]))
    type = fields.String(load_default=None)
    queue = fields.String(load_default=None)
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=MAX_LIMIT))
    cursor = fields.Integer(load_default=None, validate=validate.Range(min=0))


def runtime() -> Runtime:
    return current_app.extensions["conveyor"]  # type: ignore[no-any-return]


def tenant() -> str:
    """The caller's tenant (one ``default`` tenant until API keys exist)."""
    return DEFAULT_TENANT


def json_body() -> Any:
    body = request.get_json(silent=True)
    if body is None:
        raise InvalidPayload("the request body must be JSON (Content-Type: application/json)",
                             details={"body": ["Not valid JSON."]})
    return body


#: Built once and shared by all threads (see JobType.loader: a schema per request fed the cyclic GC).
_SUBMISSION = SubmissionSchema()
_LIST_QUERY = ListQuerySchema()


def load(schema: Schema, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidPayload("expected a JSON object", details={"body": ["Not a JSON object."]})
    try:
        return schema.load(data)  # type: ignore[no-any-return]
    except ValidationError as exc:
        details = exc.messages if isinstance(exc.messages, dict) else {"body": exc.messages}
        raise InvalidPayload("invalid request", details=details) from None


def submission(data: Any, *, idempotency_key: str | None = None) -> Submission:
    d = load(_SUBMISSION, data)
    options = {"callback_url": d["callback_url"]} if d.get("callback_url") else {}
    return Submission(
        type=d["type"], payload=d["payload"], priority=d["priority"], max_retries=d["max_retries"],
        delay_ms=d["delay_ms"], idempotency_key=d["idempotency_key"] or idempotency_key, tenant=tenant(),
        options=options, trace_id=request.headers.get("X-Trace-Id"),
    )


@bp.post("/jobs")
def submit_job():  # type: ignore[no-untyped-def]
    sub = submission(json_body(), idempotency_key=request.headers.get("Idempotency-Key"))
    job, created = runtime().jobs.submit(sub)
    headers = {"Location": f"/api/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return job.to_api(), (202 if created else 200), headers


@bp.post("/jobs/bulk")
def submit_bulk():  # type: ignore[no-untyped-def]
    body = json_body()
    items = body.get("jobs") if isinstance(body, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BULK:
        raise InvalidPayload(f"expected {{\"jobs\": [...]}} with 1 to {MAX_BULK} jobs", details={"jobs": ["Invalid."]})
    subs, errors = [], {}
    for i, item in enumerate(items):
        try:
            sub = submission(item)
            runtime().jobs.build(sub)  # validates the payload too
            subs.append(sub)
        except (InvalidPayload, UnknownJobType) as exc:
            errors[str(i)] = {"error": exc.code, "message": exc.message, **exc.details}
    if errors:
        raise InvalidPayload("some jobs are invalid; none was submitted", details={"jobs": errors})
    results = runtime().jobs.submit_many(subs)
    return {"jobs": [job.to_api() for job, _ in results]}, 202


@bp.post("/jobs/generate")
def generate_alias():  # type: ignore[no-untyped-def]
    """Seed-002 compatibility: ``POST /api/jobs/generate`` submits an ``images.generate`` job."""
    rt = runtime()
    if "images.generate" not in rt.registry:
        return {"error": "job_type_not_available",
                "message": "image generation is not available in this deployment (no images.generate job type)",
                "details": {}}, 404
    body = json_body()
    if not isinstance(body, dict):
        raise InvalidPayload("expected a JSON object", details={"body": ["Not a JSON object."]})
    envelope = {k: body.pop(k) for k in ENVELOPE_FIELDS if k in body}
    job, created = rt.jobs.submit(submission({"type": "images.generate", "payload": body, **envelope},
                                             idempotency_key=request.headers.get("Idempotency-Key")))
    out = job.to_api()
    out.update({"jobId": job.id, "status": job.state.value, "message": "Job created successfully"})
    return out, (202 if created else 200), {"Location": f"/api/jobs/{job.id}"}


@bp.get("/jobs")
def list_jobs():  # type: ignore[no-untyped-def]
    q = load(_LIST_QUERY, request.args.to_dict())
    jobs, cursor = runtime().store.list_jobs(tenant(), state=q["state"], type=q["type"], queue=q["queue"],
                                        limit=q["limit"], cursor=q["cursor"])
    return {"jobs": [j.to_api() for j in jobs], "next_cursor": cursor}


@bp.get("/jobs/stats/overview")
def stats():  # type: ignore[no-untyped-def]
    from service.broker import queue_depths

    rt = runtime()
    per_queue = rt.store.counts(tenant())
    totals = {s.value: 0 for s in JobState}
    for counts in per_queue.values():
        for state, n in counts.items():
            totals[state] = totals.get(state, 0) + n
    queues = sorted(set(rt.registry.queues()) | set(per_queue))
    return {"states": totals, "queues": per_queue, "broker": queue_depths(rt.broker, queues)}


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):  # type: ignore[no-untyped-def]
    return runtime().jobs.get(job_id, tenant()).to_api()


@bp.get("/jobs/<job_id>/result")
def get_result(job_id: str):  # type: ignore[no-untyped-def]
    result = runtime().jobs.result(job_id, tenant())
    return {"job_id": job_id, "state": "succeeded", "result": result}


@bp.get("/jobs/<job_id>/events")
def get_events(job_id: str):  # type: ignore[no-untyped-def]
    rt = runtime()
    rt.jobs.get(job_id, tenant())
    since = request.args.get("since", "-")
    return {"events": [e.to_api() for e in rt.store.job_events(job_id, after=since)]}


@bp.post("/jobs/<job_id>/retry")
def retry_job(job_id: str):  # type: ignore[no-untyped-def]
    job = runtime().jobs.retry(job_id, tenant())
    return job.to_api(), 202


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str):  # type: ignore[no-untyped-def]
    job = runtime().jobs.cancel(job_id, tenant())
    return job.to_api(), (200 if job.state is JobState.CANCELLED else 202)


@bp.get("/job-types")
def job_types():  # type: ignore[no-untyped-def]
    return {"job_types": [jt.describe() for jt in runtime().registry.all()]}
