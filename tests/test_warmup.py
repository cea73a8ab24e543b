"""The SFT warm-up checkpoint of ReFT / self-training / the reranker (sft.warmup_checkpoint): a fixed epoch (the
official scripts: exps/paper_exps/ReFT/gsm8k.sh:8) or the earliest epoch whose training samples are right often
enough, measured on the real samples of each epoch checkpoint (a cached samples stage each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_config

from reft_exp.methods.sft import choose_warmup_epoch

pytestmark = pytest.mark.seconds(12)  # its measured time in `make test`: orders the collection (conftest)

# a 3-epoch N-CoT SFT run of a few seconds; the rule samples 16 training questions per epoch checkpoint
QUICK = ["dataset.train_size=48", "dataset.test_size=8", "sft.epochs=3", "dataset.warmup_epoch.n=2",
         "sft.eval_max_length=112", "progress=false", "sft.warmup_checkpoint.sampling.max_questions=16",
         "sft.warmup_checkpoint.sampling.max_new_tokens=40"]
RULE = ["sft.warmup_checkpoint.rule=min_sample_accuracy"]


def _visits(accuracies: dict[int, float], start: int, minimum: float) -> tuple[int, list[int]]:
    seen: list[int] = []

    def acc(e: int) -> float:
        seen.append(e)
        return accuracies[e]

    return choose_warmup_epoch(start, sorted(accuracies), acc, minimum), seen


def test_the_rule_picks_the_earliest_epoch_at_the_minimum_searching_from_the_configured_one():
    rising = {1: 0.01, 2: 0.18, 3: 0.39, 4: 0.59}  # the demo's SFT run (256 training questions per epoch)
    assert _visits(rising, 3, 0.25) == (3, [3, 2])  # epoch 2 is below: epoch 3 stays
    assert _visits(rising, 4, 0.25) == (3, [4, 3, 2])  # walks back while the earlier epoch still reaches it
    assert _visits(rising, 1, 0.25) == (3, [1, 2, 3])  # walks forward to the first epoch that reaches it
    assert _visits(rising, 2, 0.9) == (4, [2, 3, 4])  # none reaches it: the last epoch
    saturated = {1: 0.003, 2: 0.375, 3: 0.91, 4: 0.96}  # a claims seed: a fixed epoch 3 left nothing to learn
    assert _visits(saturated, 3, 0.25) == (2, [3, 2, 1])
    # not monotone: the walk back stops at the first earlier epoch below the minimum
    assert _visits({1: 0.3, 2: 0.1, 3: 0.3, 4: 0.5}, 4, 0.25) == (3, [4, 3, 2])


def _context(cfg):
    from accelerate import Accelerator

    from reft_exp.context import RunContext
    from reft_exp.data import load_splits
    from reft_exp.tracking import Tracker

    ctx = RunContext(cfg=cfg, accelerator=Accelerator(cpu=True), splits={}, tracker=Tracker())
    ctx.splits = load_splits(cfg.dataset, cfg.cot.name)
    return ctx


def _right(stage_dir: str) -> float:
    rows = [json.loads(x) for x in (Path(stage_dir) / "samples.jsonl").read_text().splitlines()]
    flags = [s["correct"] for r in rows for s in r["samples"]]
    return sum(flags) / len(flags)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One results folder for the module: its SFT run and samples stages are computed once."""
    return tmp_path_factory.mktemp("warmup") / "results"


def test_the_rule_measures_each_epoch_on_training_samples_and_reuses_the_sft_run(results):
    from reft_exp.methods.sft import sft_checkpoint, sft_stage

    fixed = _context(run_config(QUICK, results))
    sft, _ = sft_stage(fixed)
    assert sft_checkpoint(fixed, sft, "warmup") == sft.dir / "epoch_2"
    assert fixed.warmup == {"epoch": 2, "rule": "fixed", "checkpoint": str(sft.dir / "epoch_2")}

    # minimum 0: every epoch reaches it, so the walk goes back from epoch 2 to epoch 1
    low = _context(run_config([*QUICK, *RULE, "sft.warmup_checkpoint.min_sample_accuracy=0"], results))
    stage, _ = sft_stage(low)
    assert stage.dir == sft.dir and low.stages_used["sft"]["reused"] is True  # the rule is not in the SFT key
    assert sft_checkpoint(low, stage, "warmup") == sft.dir / "epoch_1"
    assert low.warmup["epoch"] == 1 and sorted(low.warmup["train_sample_accuracy"]) == ["1", "2"]
    for e in (1, 2):  # the recorded accuracy is that of the epoch's samples on the training split
        used = low.stages_used[f"warmup_samples_epoch{e}"]
        assert low.warmup["train_sample_accuracy"][str(e)] == pytest.approx(_right(used["dir"]))
        stage_key = json.loads((Path(used["dir"]) / "stage_key.json").read_text())
        assert stage_key["upstream"] == {"checkpoint": f"{sft.dir.name}/epoch_{e}", "split": "train"}

    # minimum 1 (every sample right): no epoch of this short run reaches it, so the last one; epoch 2 is reused
    high = _context(run_config([*QUICK, *RULE, "sft.warmup_checkpoint.min_sample_accuracy=1"], results))
    stage, _ = sft_stage(high)
    assert sft_checkpoint(high, stage, "warmup") == sft.dir / "epoch_3"
    accs = high.warmup["train_sample_accuracy"]
    assert sorted(accs) == ["2", "3"] and max(accs.values()) < 1
    assert high.stages_used["warmup_samples_epoch2"]["reused"] is True
    assert high.stages_used["warmup_samples_epoch3"]["reused"] is False


def test_an_rl_cell_records_the_warmup_it_started_from(results):
    from reft_exp.run import run_cell
    from reft_exp.tables import budget

    rl = ["method=online_st", "method.epochs=1", "method.batch_size=8", "method.max_questions=16",
          "method.max_length=120", "method.eval_max_length=112"]
    rec = run_cell(run_config([*QUICK, *RULE, *rl, "sft.warmup_checkpoint.min_sample_accuracy=0"], results))
    assert rec["warmup"]["epoch"] == 1 and rec["method"]["init_checkpoint"].endswith("epoch_1")
    assert "warm-up SFT epoch 1/3 (the first with >= 0% of training samples right) + 1 x 16 questions" in budget(rec)
