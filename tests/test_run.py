"""End to end through the Hydra app: results records, multirun, skip-on-rerun, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A few seconds of work: tiny data, one epoch, short generations.
QUICK = ["dataset.train_size=64", "dataset.test_size=16", "sft.epochs=1", "inference.max_new_tokens=24",
         "progress=false"]


def run_app(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "reft_exp.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_single_run_writes_a_complete_record(tmp_path):
    proc = run_app([f"paths.results_dir={tmp_path}/results", *QUICK], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp_path / "results" / "runs").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["cell_id"] == "tiny__arith__n__sft__greedy__seed42" == path.stem
    assert rec["coordinates"] == {"model": "tiny", "dataset": "arith", "cot": "n", "method": "sft",
                                  "inference": "greedy", "seed": 42}
    assert 0.0 <= rec["accuracy"] <= 1.0 and rec["accuracy"] == rec["best_accuracy"]
    assert len(rec["epochs"]) == 1 and rec["epochs"][0]["train_loss"] > 0
    assert rec["config"]["sft"]["epochs"] == 1
    assert {"python", "torch", "transformers", "git_commit"} <= set(rec["versions"])
    assert rec["hardware"]["cpu_count"] >= 1
    assert {"data", "method", "total"} <= set(rec["timings_s"])
    assert rec["stages"]["sft"]["reused"] is False
    # re-running the same cell skips it: the record is not rewritten
    mtime = path.stat().st_mtime_ns
    proc = run_app([f"paths.results_dir={tmp_path}/results", *QUICK], tmp_path)
    assert proc.returncode == 0 and "skipped" in proc.stderr + proc.stdout
    assert path.stat().st_mtime_ns == mtime


def test_multirun_over_seeds_writes_two_records(tmp_path):
    proc = run_app(["--multirun", "seed=1,2", f"paths.results_dir={tmp_path}/results", *QUICK], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = sorted((tmp_path / "results" / "runs").glob("*.json"))
    assert [p.stem for p in records] == ["tiny__arith__n__sft__greedy__seed1", "tiny__arith__n__sft__greedy__seed2"]
    seeds = [json.loads(p.read_text())["coordinates"]["seed"] for p in records]
    assert seeds == [1, 2]
    # the tiny model is built once and shared by both jobs
    assert len(list((tmp_path / "results" / "cache" / "tiny_model").glob("*/STAGE_DONE.json"))) == 1


@pytest.mark.parametrize("args,needle", [
    (["sft.lrr=1"], "lrr"),
    (["method=nonexistent"], "Available options"),
    (["+sft.lrr=1"], "sft.lrr"),
    (["model=codellama-7b", "model.path=/does/not/exist"], "does not exist"),
])
def test_bad_config_fails_at_start_with_one_line(args, needle, tmp_path):
    proc = run_app([f"paths.results_dir={tmp_path}/results", *args], tmp_path, timeout=120)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert not (tmp_path / "results" / "runs").exists()
