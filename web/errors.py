"""One JSON error shape for everything: ``{"error": code, "message": ..., "details": {...}}``."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from service.errors import (
    BackendUnavailable,
    InvalidPayload,
    InvalidTransition,
    JobNotFound,
    ResultNotReady,
    ServiceError,
    UnknownJobType,
)

__all__ = ["register", "error_response"]

logger = logging.getLogger(__name__)

#: HTTP status per service error (most specific first).
STATUS: list[tuple[type[ServiceError], int]] = [
    (InvalidPayload, 400),
    (UnknownJobType, 400),
    (JobNotFound, 404),
    (InvalidTransition, 409),
    (ResultNotReady, 409),
    (BackendUnavailable, 503),
]


def error_response(code: str, message: str, status: int, details: dict | None = None):  # type: ignore[no-untyped-def]
    resp = jsonify({"error": code, "message": message, "details": details or {}})
    resp.status_code = status
    if status == 503:
        resp.headers["Retry-After"] = "5"
    return resp


def register(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):  # type: ignore[no-untyped-def]
        status = next((s for cls, s in STATUS if isinstance(exc, cls)), 500)
        if status >= 500:
            logger.warning("%s: %s", exc.code, exc.message)
        return error_response(exc.code, exc.message, status, exc.details)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(code, exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        logger.exception("unhandled error")
        return error_response("internal_error", "an unexpected error occurred; it has been logged", 500)
