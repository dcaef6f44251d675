"""The code passes ruff (configured in pyproject.toml), so style problems fail CI, not review."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    # ruff comes with the test extras; `python -m ruff` finds the one in this environment.
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "studio", "tests", "benchmarks", "scripts", "launch.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
