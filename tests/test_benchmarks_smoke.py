"""Smoke tests of the scripts in benchmarks/ (tiny inputs, no timing assertions)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import launch
import pytest

pytestmark = pytest.mark.seconds(16)  # its measured time in `make test`: orders the collection (conftest)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REFT_SHARED_DIR", REPO_ROOT.parent / "shared"))
SVAMP_PROGRAMS = SHARED / "data" / "reft" / "svamp_python_sdp.json"
GSM8K_TRAIN = SHARED / "data" / "gsm8k" / "train.jsonl"


def test_executor_benchmark_smoke() -> None:
    if not SVAMP_PROGRAMS.exists():
        pytest.skip(f"SVAMP P-CoT data not found at {SVAMP_PROGRAMS}; set REFT_SHARED_DIR")
    completed = _script("executor_throughput.py", "--limit", "40", "--data", str(SVAMP_PROGRAMS))
    assert "programs/s" in completed.stdout
    assert "correct 40/40" in completed.stdout
    assert "ratio ours/baseline" in completed.stdout


def _script(script: str, *args: str) -> subprocess.CompletedProcess:
    """``python benchmarks/SCRIPT ARGS`` as a process (forked from the worker's zygote: tests/launch.py)."""
    completed = launch.run([str(REPO_ROOT / "benchmarks" / script), *args], cwd=REPO_ROOT, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def _run_benchmark(script: str, *args: str) -> str:
    if not GSM8K_TRAIN.exists():
        pytest.skip(f"GSM8K not found at {GSM8K_TRAIN}; set REFT_SHARED_DIR")
    return _script(script, "--size", "cpu", *args).stdout


def test_rollout_benchmark_smoke(tmp_path) -> None:
    out = _run_benchmark("rollout.py", "--records", "200", "--prompts", "4", "--batch-size", "2",
                         "--max-new-tokens", "8", "--no-compile", "--json", str(tmp_path / "r.json"))
    assert "ratio hf_static/hf_plain" in out
    assert "identical outputs 4/4" in out  # greedy: the static-cache engine decodes what plain generate does
    assert (tmp_path / "r.json").exists()
    out = _run_benchmark("rollout.py", "--records", "200", "--prompts", "4", "--batch-size", "2",
                         "--max-new-tokens", "8", "--engine", "hf", "--sample")
    assert "ratio hf/hf_plain" in out and "identical outputs 4/4" in out  # the buffered cache, seeded samples


def test_ppo_step_benchmark_smoke() -> None:
    out = _run_benchmark("ppo_step.py", "--records", "300", "--questions", "2", "--max-length", "170")
    assert "baseline (hf generate)" in out and "ours (hf_static)" in out
    assert "speed-up ours vs baseline" in out


def test_sft_benchmark_smoke() -> None:
    out = _run_benchmark("sft.py", "--records", "200", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                         "--max-length", "512")
    assert "length-bucketed" in out and "ratio bucketed/shuffled" in out


def test_threads_benchmark_smoke() -> None:
    completed = _script("threads.py", "--threads", "1", "2", "--batch-sizes", "4", "--steps", "1", "--seq-len", "16")
    rows = [ln.split() for ln in completed.stdout.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [("1", "4"), ("2", "4")]  # one row per (threads, batch size)
    speed = [float(r[2]) for r in rows]
    assert min(speed) > 0
    # the ratio column is each row's examples/s over the first thread count's (printed rounded: 0.1 and 0.01)
    ratio = float(rows[1][3].removesuffix("x"))
    assert ratio == pytest.approx(speed[1] / speed[0], abs=0.006 + 0.05 / speed[0] * (1 + ratio))


def test_generation_batch_benchmark_smoke(tmp_path) -> None:
    out = _script("generation_batch.py", "--results-dir", str(tmp_path), "--train-size", "64", "--test-size", "8",
                  "--sft-epochs", "1", "--max-new-tokens", "12", "--sample-max-new-tokens", "12", "--samples", "2",
                  "--greedy-batch", "8", "3", "--sample-batch", "4", "2", "--json", str(tmp_path / "g.json")).stdout
    assert out.count("ratio old/new") == 3  # greedy without / with the header, sampling
    assert (tmp_path / "g.json").exists()


def test_kv_cache_benchmark_smoke(tmp_path) -> None:
    out = _script("kv_cache.py", "--results-dir", str(tmp_path), "--train-size", "64", "--test-size", "8",
                  "--sft-epochs", "1", "--questions", "4", "--samples", "3", "--max-new-tokens", "12",
                  "--sample-max-new-tokens", "12", "--repeats", "1", "--json", str(tmp_path / "kv.json")).stdout
    assert out.count("outputs identical") == 2  # greedy and sampled, token for token
    assert (tmp_path / "kv.json").exists()


def test_response_logits_benchmark_smoke() -> None:
    out = _run_benchmark("response_logits.py", "--records", "100", "--questions", "2", "--repeats", "1")
    assert "log-probs and values identical: True" in out  # the LM head on fewer positions changes no number
    assert "ratio baseline/ours (time)" in out
