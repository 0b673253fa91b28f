"""The Flask app: HTTP API, health, (later) live status and dashboard. Nothing imports ``web``."""

from __future__ import annotations

import logging

from flask import Flask

from service.config import Settings
from service.runtime import Runtime, configure

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    """Build the app on the process's runtime (configured from ``settings`` or the environment)."""
    runtime = runtime or configure(settings)
    runtime.load_job_modules()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = runtime.settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["conveyor"] = runtime

    from web import api, errors, health, live

    errors.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    live.init_app(app)
    return app
