"""The house style's mechanical part (STYLE.md): ruff on the whole tree, mypy --strict on service/."""

from __future__ import annotations

import subprocess
import sys

from tests.support.procs import ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_tree_passes_ruff():
    out = run("ruff", "check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_service_package_type_checks_under_mypy_strict():
    out = run("mypy")  # files and strictness come from [tool.mypy] in pyproject.toml
    assert out.returncode == 0, out.stdout + out.stderr
