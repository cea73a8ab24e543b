"""Learning tests on the embedded default: the methods really learn (slow, still run in CI).

Every learning test shares one SFT run (a cached stage in the run-wide `learning_results` dir, so the
reranker test in tests/test_learning_rerank.py reuses it from the other xdist worker): the tiny/arith cell
with Python-program CoT, 200 test questions, batch 16, the first 2 epochs of a 4-epoch schedule
(`sft.train_epochs`). Its warm-up is epoch 2 with the lr still mid-schedule, as upstream's warm-up is epoch 2
of 40; the end of a short annealed run is a worse start for ReFT (docs/reft.md). About 4 single-thread CPU
minutes.
"""

from __future__ import annotations

import pytest
from conftest import run_config

from reft_exp.methods.reft import read_steps
from reft_exp.run import run_cell

pytestmark = pytest.mark.slow

SFT = ["cot=p", "dataset.test_size=200", "sft.epochs=4", "sft.train_epochs=2", "sft.batch_size=16",
       "dataset.warmup_epoch.p=2", "progress=false"]
# ReFT from that warm-up with the tiny defaults (lambda 1, separate critic, lr 5e-5, beta 0.01): 12 steps of
# 64 training questions, greedy test accuracy before (epoch 0 = the warm-up) and after.
REFT_STEPS = 12
REFT = [*SFT, "method=reft", f"method.max_questions={64 * REFT_STEPS}", "method.epochs=1"]


@pytest.fixture(scope="module")
def sft_record(learning_results):
    return run_cell(run_config(SFT, learning_results))


def test_sft_raises_greedy_accuracy_from_zero(sft_record, learning_results):
    from accelerate import Accelerator

    from reft_exp.answers import AnswerSpec
    from reft_exp.data import load_splits
    from reft_exp.evaluate import greedy_eval
    from reft_exp.execute import ProgramExecutor
    from reft_exp.models import load_causal_lm, load_tokenizer

    cfg = run_config(SFT, learning_results)
    base = sft_record["stages"]["tiny_model"]["dir"]
    test = load_splits(cfg.dataset, "p")["test"]
    with ProgramExecutor(timeout_s=5) as executor:
        before = greedy_eval(Accelerator(cpu=True), load_causal_lm(base, cfg.model), load_tokenizer(base, cfg.model),
                             test, AnswerSpec(cot="p"), max_new_tokens=64, batch_size=200, executor=executor)
    accs = [e["test_accuracy"] for e in sft_record["epochs"]]
    losses = [e["train_loss"] for e in sft_record["epochs"]]
    print(f"untrained {before.accuracy:.3f}; SFT per epoch {accs}; loss {losses}")
    assert before.accuracy <= 0.02
    assert [e["epoch"] for e in sft_record["epochs"]] == [1, 2]  # sft.train_epochs: 2 of the 4 epochs
    assert sft_record["best_accuracy"] >= 0.5
    assert losses[-1] < 0.25 * losses[0]


def test_reft_raises_training_reward_and_greedy_accuracy(sft_record, learning_results):
    rec = run_cell(run_config(REFT, learning_results))
    assert rec["stages"]["sft"]["reused"] is True
    warmup, after = rec["epochs"][0]["test_accuracy"], rec["epochs"][1]["test_accuracy"]
    steps = read_steps(rec["method"]["steps_file"])
    correct = [s["correct"] for s in steps]
    kl = [s["kl"] for s in steps]
    first, last = sum(correct[:4]) / 4, sum(correct[-4:]) / 4
    print(f"greedy test: warm-up {warmup:.3f} -> ReFT {after:.3f}; train fraction correct per step "
          f"{[round(c, 2) for c in correct]}; KL {[round(k, 2) for k in kl]}")
    assert len(steps) == REFT_STEPS
    assert last > first + 0.05, "the training reward rises"
    assert after > warmup + 0.02, "greedy test accuracy rises above the warm-up's"
    assert max(kl) < 2.0, "KL to the reference stays bounded"  # beta 0 vs 0.05: tests/test_reft.py
