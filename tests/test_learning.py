"""Learning tests on the embedded default: the methods really learn (slow, still run in CI).

Every learning test shares one SFT run (a cached stage in the run-wide `learning_results` dir, so the
reranker test in tests/test_learning_rerank.py reuses it from the other xdist worker): the tiny/arith cell
with Python-program CoT, 2,000 training questions, 200 test questions, batch 8 (the tiny model learns per
update: 500 updates at batch 8 cost half the CPU time of 500 at batch 16 on 4,000 questions), the first 2 epochs
of a 4-epoch schedule (`sft.train_epochs`). Its warm-up is epoch 2 with the lr still mid-schedule, as the
official warm-up is epoch 2 of 40 (exps/paper_exps/ReFT/gsm8k.sh:8); the end of a short annealed run is a worse
start for ReFT (docs/reft.md). Measured (seed 42): greedy 4.5% -> 51.5% without the P-CoT header (73.5% with it, the RL evaluations' prompt), its
samples right ~30% of the time: room for every RL method to show its rise. About 1.7 single-thread CPU minutes.
"""

from __future__ import annotations

import pytest
from conftest import run_config

from reft_exp.methods.reft import read_steps
from reft_exp.run import run_cell

pytestmark = [pytest.mark.slow, pytest.mark.seconds(140)]  # measured in `make test` (conftest)

SFT = ["cot=p", "dataset.train_size=2000", "dataset.test_size=200", "sft.epochs=4", "sft.train_epochs=2",
       "sft.batch_size=8", "sft.eval_every_epochs=2", "dataset.warmup_epoch.p=2", "progress=false"]
# ReFT from that warm-up with the tiny defaults (lambda 1, separate critic, lr 5e-5, beta 0.01) but 32 questions
# a step: a pool of 128 training questions for 2 epochs (8 PPO steps, 256 samples), greedy test accuracy before
# (epoch 0 = the warm-up) and after the last epoch. The training reward is compared per epoch, on the same 128
# questions: step to step, the difficulty of 32 fresh questions moves it more than a few steps of learning do
# (12 steps of 64 fresh questions: first 4 steps 0.395, last 4 0.422, while greedy rose 73.5 -> 78.0).
# 2 epochs, not 3 (2026-12-01, the suite's 8 minutes): the third epoch cost 21 s and narrowed both margins
# (reward per epoch 0.328, 0.414, 0.367; greedy 78.5 after epoch 2, 81.0 after epoch 3; docs/reft.md).
POOL, EPOCHS, PER_STEP = 128, 2, 32
REFT = [*SFT, "method=reft", f"method.max_questions={POOL}", f"method.batch_size={PER_STEP}",
        f"method.epochs={EPOCHS}", f"method.eval_every_epochs={EPOCHS}"]


def correct_per_epoch(steps: list[dict], epochs: int) -> list[float]:
    """The fraction of correct samples of each RL epoch (mean over its steps, which are equal-sized): on a
    question pool, every epoch samples the same questions."""
    return [sum(s["correct"] for s in steps if s["epoch"] == e) / sum(s["epoch"] == e for s in steps)
            for e in range(1, epochs + 1)]


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
    test = load_splits(cfg.dataset, "p")["test"][:50]  # the untrained model: 0 right of 50 measured
    with ProgramExecutor(timeout_s=5) as executor:
        before = greedy_eval(Accelerator(cpu=True), load_causal_lm(base, cfg.model), load_tokenizer(base, cfg.model),
                             test, AnswerSpec(cot="p"), max_new_tokens=64, batch_size=50, executor=executor)
    accs = [e.get("test_accuracy") for e in sft_record["epochs"]]  # evaluated at epoch 2 only (its warm-up)
    losses = [e["train_loss"] for e in sft_record["epochs"]]
    print(f"untrained {before.accuracy:.3f}; SFT per epoch {accs}; loss {losses}")
    assert before.accuracy <= 0.02
    assert [e["epoch"] for e in sft_record["epochs"]] == [1, 2]  # sft.train_epochs: 2 of the 4 epochs
    assert sft_record["best_accuracy"] >= 0.45  # measured 0.515 (epoch 1, when it was evaluated: 0.045)
    assert losses[-1] < 0.25 * losses[0]
    # inference.header_check: the same checkpoint with the program header in the prompt (the prompt of the RL
    # evaluations and of the samples) is right far more often than from the question alone (measured 0.735)
    with_header = sft_record["inference"]["accuracy_with_header"]
    print(f"SFT best {sft_record['best_accuracy']:.3f}, with the program header in the prompt {with_header:.3f}")
    assert with_header >= sft_record["best_accuracy"] + 0.10
    assert sft_record["stages"]["header_eval"]["reused"] is False


def test_reft_raises_training_reward_and_greedy_accuracy(sft_record, learning_results):
    rec = run_cell(run_config(REFT, learning_results))
    assert rec["stages"]["sft"]["reused"] is True
    warmup, after = rec["epochs"][0]["test_accuracy"], rec["epochs"][-1]["test_accuracy"]
    steps = read_steps(rec["method"]["steps_file"])
    correct = correct_per_epoch(steps, EPOCHS)
    kl = [s["kl"] for s in steps]
    print(f"greedy test: warm-up {warmup:.3f} -> ReFT {after:.3f}; train fraction correct per epoch "
          f"{[round(c, 3) for c in correct]}, per step {[round(s['correct'], 2) for s in steps]}; "
          f"KL {[round(k, 2) for k in kl]}")
    assert len(steps) == EPOCHS * POOL // PER_STEP
    # measured (seed 42): 0.328 -> 0.414 on the pool; greedy 73.5 -> 78.5; KL at most 0.21
    assert correct[-1] > correct[0] + 0.02, "the training reward on the same questions rises over the warm-up's"
    assert after > warmup + 0.03, "greedy test accuracy rises above the warm-up's"
    assert max(kl) < 2.0, "KL to the reference stays bounded"  # beta 0 vs 0.05: tests/test_reft.py
