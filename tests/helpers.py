"""Helpers shared by the tests (no fixtures here: those are in conftest.py)."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m consumer ARGS` in a subprocess; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )
