"""Learning tests on the embedded default: the methods really learn (slow, still run in CI).

One SFT run (module fixture) serves every test here, as it serves a grid: ReFT starts from its warm-up
checkpoint (the epoch-2 checkpoint of the same run), exactly as upstream.
"""

from __future__ import annotations

import pytest
from conftest import run_config

from reft_exp.methods.reft import read_steps
from reft_exp.run import run_cell

pytestmark = pytest.mark.slow

# The default tiny/arith cell with a smaller test split and 5 SFT epochs (about 2-3 CPU minutes).
SFT = ["dataset.test_size=200", "sft.epochs=5", "progress=false"]
# ReFT at the tiny scale for one epoch over 1,600 training questions.
REFT = ["method=reft", "method.epochs=1", "method.max_questions=1600"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("learning")


@pytest.fixture(scope="module")
def sft_record(results):
    return run_cell(run_config(SFT, results))


def test_sft_raises_greedy_accuracy_from_zero(sft_record, results):
    from accelerate import Accelerator

    from reft_exp.answers import AnswerSpec
    from reft_exp.data import load_splits
    from reft_exp.evaluate import greedy_eval
    from reft_exp.models import load_causal_lm, load_tokenizer

    cfg = run_config(SFT, results)
    base = sft_record["stages"]["tiny_model"]["dir"]
    test = load_splits(cfg.dataset, "n")["test"]
    before = greedy_eval(Accelerator(cpu=True), load_causal_lm(base, cfg.model), load_tokenizer(base, cfg.model),
                         test, AnswerSpec(), max_new_tokens=64, batch_size=200)
    accs = [e["test_accuracy"] for e in sft_record["epochs"]]
    losses = [e["train_loss"] for e in sft_record["epochs"]]
    print(f"untrained {before.accuracy:.3f}; SFT per epoch {accs}; loss {losses}")
    assert before.accuracy <= 0.02
    assert sft_record["best_accuracy"] >= 0.30
    assert losses[-1] < 0.25 * losses[0]


@pytest.fixture(scope="module")
def reft_record(sft_record, results):
    return run_cell(run_config(REFT, results))


def test_reft_improves_over_warmup(reft_record):
    rec = reft_record
    assert rec["stages"]["sft"]["reused"] is True, "ReFT must start from the shared SFT run"
    epochs = rec["epochs"]
    warmup = epochs[0]["test_accuracy"]
    print(f"warm-up {warmup:.3f}; ReFT best {rec['best_accuracy']:.3f}; per epoch {epochs[1:]}")
    assert rec["best_accuracy"] > warmup + 0.02
    steps = read_steps(rec["method"]["steps_file"])
    first, last = steps[: len(steps) // 4], steps[-len(steps) // 4 :]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    assert mean(last, "score") > mean(first, "score"), "mean training reward must rise"
    assert mean(last, "kl") < 2.0, "KL to the reference must stay bounded"


def test_reft_without_kl_penalty_drifts_further(reft_record, results):
    no_kl = run_cell(run_config([*REFT, "method.kl_coef=0.0", "tag=beta0"], results))
    tail = lambda rec: read_steps(rec["method"]["steps_file"])[-5:]  # noqa: E731
    kl_with = sum(r["kl"] for r in tail(reft_record)) / 5
    kl_without = sum(r["kl"] for r in tail(no_kl)) / 5
    print(f"KL over the last 5 steps: beta=0.05 {kl_with:.4f}, beta=0 {kl_without:.4f}")
    assert kl_without > 1.5 * kl_with
