"""The grid end to end: the smoke experiment (every method, every inference mode) as one sweep, at a
seconds-per-cell size (tests/conf: the `tiny_quick` model and its scale files), then the tables."""

from __future__ import annotations

import json

import pytest
from test_run import ROOT, run_app

from reft_exp.tables import build_table1, build_table2, load_records

pytestmark = pytest.mark.seconds(17)  # its measured time in `make test`: orders the collection (conftest)

SMOKE_CELLS = {("sft", "greedy"), ("offline_st", "greedy"), ("online_st", "greedy"), ("reft", "greedy"),
               ("sft", "majority_vote"), ("sft", "rerank"), ("reft", "majority_vote"), ("reft", "rerank")}


def test_smoke_sweep_trains_sft_once_and_fills_both_tables(tmp_path):
    results = tmp_path / "results"
    proc = run_app(["--multirun", f"--config-dir={ROOT / 'tests' / 'conf'}", "experiment=smoke", "model=tiny_quick",
                    # the smoke experiment sets its own task size; the command line wins over it
                    # and N-CoT with one SFT epoch: the grid's mechanics at the quick model's lengths
                    "dataset.train_size=48", "dataset.test_size=12", "cot=n", "sft.epochs=1",
                    f"paths.results_dir={results}"], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]
    cells = {(r["coordinates"]["method"], r["coordinates"]["inference"]) for r in records}
    assert cells == SMOKE_CELLS
    # one SFT run for the whole grid: computed by the first cell, reused by the seven others
    sft_use = [r["stages"]["sft"]["reused"] for r in records]
    assert sft_use.count(False) == 1 and len({r["stages"]["sft"]["dir"] for r in records}) == 1
    # the test samples of each generator are drawn once for voting and reranking; the warm-up samples once
    # for offline self-training and both rerankers
    by = {(r["coordinates"]["method"], r["coordinates"]["inference"]): r for r in records}
    # the smoke experiment picks the warm-up by rule (sft.warmup_checkpoint); here the one SFT epoch there is
    assert by[("reft", "greedy")]["warmup"]["rule"] == "min_sample_accuracy"
    assert by[("reft", "greedy")]["warmup"]["epoch"] == 1
    for m in ("sft", "reft"):
        assert by[(m, "rerank")]["inference"]["samples_stage"] == by[(m, "majority_vote")]["inference"]["samples_stage"]
    train_samples = {r["stages"]["samples_train"]["dir"] for r in records if "samples_train" in r["stages"]}
    assert len(train_samples) == 1
    assert sum(not r["stages"]["samples_train"]["reused"] for r in records if "samples_train" in r["stages"]) == 1
    for r in records:
        inf = r["inference"]
        if r["coordinates"]["inference"] != "greedy":
            assert 0 <= inf["accuracy"] <= inf["upper_bound"] <= 1
    # the sweep's end rebuilt the tables from every record (Hydra callback)
    table1 = (results / "tables" / "table1.md").read_text()
    table2 = (results / "tables" / "table2.md").read_text()
    assert "tiny_quick" in table1 and "tiny_quick" in table2
    df = load_records(results / "runs")
    t1, t2 = build_table1(df), build_table2(df)
    assert len(t1) == 4 and len(t2) == 2  # rows (model, method): 4 methods greedy; sft and reft vote/rerank
    assert (results / "plots" / "accuracy_per_epoch.png").stat().st_size > 0
    assert (results / "plots" / "voting_by_k.png").stat().st_size > 0  # the vote cells carry vote accuracy by K
