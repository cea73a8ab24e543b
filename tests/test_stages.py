"""Stage keys by one rule (reft_exp.stages.stage_key) and stages that seed themselves: a stage is recomputed
exactly when something it reads changes, and its numbers do not depend on what the process ran before it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_config

from reft_exp.runner import read_steps

pytestmark = pytest.mark.seconds(18)  # its measured time in `make test`: orders the collection (conftest)

# seconds per cell: a few dozen questions, short evaluations and rollouts
QUICK = ["dataset.train_size=48", "dataset.test_size=12", "sft.epochs=1", "dataset.warmup_epoch.n=1",
         "sft.eval_max_length=112", "progress=false"]
RL = ["method.epochs=1", "method.batch_size=8", "method.max_questions=16", "method.max_length=120",
      "method.eval_max_length=112"]


def _sft_hash(cfg) -> tuple[str, str]:
    """(SFT stage hash, tiny model stage folder) of a cell, without training anything."""
    from accelerate import Accelerator

    from reft_exp.context import RunContext
    from reft_exp.data import load_splits
    from reft_exp.methods.sft import sft_stage_of
    from reft_exp.tracking import Tracker

    ctx = RunContext(cfg=cfg, accelerator=Accelerator(cpu=True), splits={}, tracker=Tracker())
    ctx.splits = load_splits(cfg.dataset, cfg.cot.name)
    return sft_stage_of(ctx).hash, ctx.base_model_path


def test_sft_key_holds_what_sft_reads_and_nothing_else(tmp_path):
    results = tmp_path / "results"
    quick = [*QUICK, "sft.epochs=3"]
    base, tiny = _sft_hash(run_config(quick, results))
    # SFT's per-epoch evaluation, and so its best checkpoint, depends on the answer extraction and the executor
    assert _sft_hash(run_config([*quick, "reward.extraction=lenient"], results))[0] != base
    assert _sft_hash(run_config([*quick, "executor.timeout_s=3"], results))[0] != base
    assert _sft_hash(run_config([*quick, "sft.lr=1e-3"], results))[0] != base
    # what SFT does not read: the warm-up choice (it picks among the SFT run's epoch checkpoints), log
    # intervals, the method and its settings, the inference mode
    for same in (["dataset.warmup_epoch.n=3"], ["sft.log_every_steps=7"], ["method=reft", "method.lr=1e-4"],
                 ["inference=majority_vote"]):
        h, t = _sft_hash(run_config([*quick, *same], results))
        assert (h, t) == (base, tiny), same


def test_a_results_folder_keeps_its_cache_when_it_moves(tmp_path):
    """Stage keys name the cached base model by its stage (label-hash), not by its path: a results folder
    copied elsewhere (a shared filesystem, REFT_RESULTS_DIR written another way) reuses its SFT run."""
    import shutil

    from reft_exp.run import run_cell

    first = run_cell(run_config(QUICK, tmp_path / "here" / "results"))
    moved = tmp_path / "there" / "results"
    shutil.move(tmp_path / "here" / "results", moved)
    again = run_cell(run_config([*QUICK, "overwrite=true"], moved))
    assert first["stages"]["sft"]["reused"] is False
    assert again["stages"]["tiny_model"]["reused"] is True and again["stages"]["sft"]["reused"] is True
    assert again["stages"]["sft"]["hash"] == first["stages"]["sft"]["hash"]
    assert again["accuracy"] == first["accuracy"]


def test_changing_the_warmup_epoch_reuses_the_sft_run_and_the_tiny_model(tmp_path):
    from reft_exp.run import run_cell

    results = tmp_path / "results"
    args = [*QUICK, "sft.epochs=2", "method=reft", *RL]
    first = run_cell(run_config([*args, "dataset.warmup_epoch.n=1"], results))
    second = run_cell(run_config([*args, "dataset.warmup_epoch.n=2"], results))
    assert first["stages"]["sft"]["reused"] is False and first["method"]["init_checkpoint"].endswith("epoch_1")
    assert second["stages"]["sft"]["reused"] is True and second["stages"]["tiny_model"]["reused"] is True
    assert second["method"]["init_checkpoint"].endswith("epoch_2")
    assert second["stages"]["reft"]["reused"] is False  # another init: another ReFT run
    assert second["stages"]["warmup_eval"]["reused"] is False  # and another warm-up to evaluate


def test_a_cell_gives_the_same_numbers_from_a_cold_and_a_warm_cache(tmp_path):
    """The same ReFT cell, once training its SFT stage in the same process just before (cold cache), once
    reading it from the cache after the process ran other cells (warm): identical per-step metrics."""
    from reft_exp.run import run_cell

    args = [*QUICK, "method=reft", *RL]
    cold = run_cell(run_config(args, tmp_path / "cold"))
    warm_dir = tmp_path / "warm"
    run_cell(run_config([*QUICK, "method=sft"], warm_dir))  # SFT computed here, other RNG use after it
    run_cell(run_config([*QUICK, "method=online_st", *RL], warm_dir))
    warm = run_cell(run_config(args, warm_dir))
    assert cold["stages"]["sft"]["reused"] is False and warm["stages"]["sft"]["reused"] is True
    # the warm-up's evaluation (epoch 0): computed by the online self-training cell, reused by ReFT's
    assert cold["stages"]["warmup_eval"]["reused"] is False and warm["stages"]["warmup_eval"]["reused"] is True
    assert cold["epochs"][0] == warm["epochs"][0] and cold["epochs"][0]["epoch"] == 0
    assert (Path(warm["stages"]["reft"]["dir"]) / "outputs" / "eval_epoch0.jsonl").read_text() == \
        (Path(cold["stages"]["reft"]["dir"]) / "outputs" / "eval_epoch0.jsonl").read_text()
    drop = ("time_generate", "time_score", "time_update")
    steps = [[{k: v for k, v in s.items() if k not in drop} for s in read_steps(r["method"]["steps_file"])]
             for r in (cold, warm)]
    assert len(steps[0]) == 2 and steps[0] == steps[1]


def test_a_stage_computed_inside_another_leaves_its_draws_as_a_cached_one_would(tmp_path):
    """The reranker draws its training samples inside its own stage: the samples seed their own draws, and its
    classifier's initial weights came out different when they were computed in the same process just before
    (cold) than when they were read from the cache (warm; found on the learning tests' reranker, held-out AUC
    0.710 vs 0.712). A stage now puts every RNG back after computing, seeded or not."""
    import random

    import numpy as np
    import torch

    from reft_exp.stages import Stage, run_stage

    def inner_compute(folder):
        torch.manual_seed(123)  # as sampling does
        return {"x": [torch.rand(1).item(), random.random(), float(np.random.rand())]}

    def outer(cache: Path, prepare_inner: bool) -> list[float]:
        inner = Stage(cache, "inner", "s", {"k": 1})
        if prepare_inner:
            run_stage(inner, None, inner_compute)

        def compute(folder):
            run_stage(inner, None, inner_compute)  # computed here (cold) or read (warm)
            return {"draws": [torch.rand(1).item(), random.random(), float(np.random.rand())]}

        run_stage(Stage(cache, "outer", "s", {"k": 1}), None, compute, seed=7)
        return Stage(cache, "outer", "s", {"k": 1}).meta()["draws"]

    cold, warm = outer(tmp_path / "cold", False), outer(tmp_path / "warm", True)
    assert cold == warm
    torch.manual_seed(7)
    assert cold[0] == torch.rand(1).item()  # the outer stage's first draw after its own seed
