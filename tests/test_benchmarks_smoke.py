"""Smoke tests of the scripts in benchmarks/ (tiny inputs, no timing assertions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SVAMP_PROGRAMS = (Path(os.environ.get("REFT_SHARED_DIR", REPO_ROOT.parent / "shared"))
                  / "data" / "reft" / "svamp_python_sdp.json")


def test_executor_benchmark_smoke() -> None:
    if not SVAMP_PROGRAMS.exists():
        pytest.skip(f"SVAMP P-CoT data not found at {SVAMP_PROGRAMS}; set REFT_SHARED_DIR")
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "executor_throughput.py"), "--limit", "40",
         "--data", str(SVAMP_PROGRAMS)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    assert "programs/s" in completed.stdout
    assert "correct 40/40" in completed.stdout
    assert "ratio ours/baseline" in completed.stdout
