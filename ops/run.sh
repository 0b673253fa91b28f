#!/usr/bin/env bash
# The run command: install into .venv and start Conveyor (API + worker + scheduler) on http://127.0.0.1:8000.
# Embedded broker and store unless CONVEYOR_BROKER_URL / CONVEYOR_REDIS_URL are set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/conveyor dev "$@"
