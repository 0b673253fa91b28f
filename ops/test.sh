#!/usr/bin/env bash
# The test command: install into .venv, make sure RabbitMQ and Redis run, run the whole suite.
# Extra arguments go to pytest (e.g. `bash ops/test.sh tests/unit -x`).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$PY" -m venv .venv || exit 1
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" || { echo "ops/test.sh: install failed" >&2; exit 1; }
bash ops/services.sh || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "ops/test.sh: pytest collected no tests; that is a failure" >&2; exit 1; fi
exit "$rc"
