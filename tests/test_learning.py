"""Learning tests on the embedded default: the methods really learn (slow, still run in CI)."""

from __future__ import annotations

import pytest
from conftest import run_config

from reft_exp.run import run_cell

pytestmark = pytest.mark.slow

# The default tiny/arith cell with a smaller test split and 4 SFT epochs (the last one is the warm-up that
# the reranker's training samples come from): about 4 single-thread CPU minutes.
SFT = ["dataset.test_size=200", "sft.epochs=4", "progress=false"]


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



# Reranking the SFT model's samples: the reranker is trained on the warm-up's samples of 600 training
# questions (a quarter of them held out) and must rank held-out samples better than chance.
RERANK = [*SFT, "inference=rerank", "inference.sampling.num_samples=8",
          "inference.reranker.train_sampling.max_questions=600", "inference.reranker.heldout_fraction=0.25"]


def test_reranker_beats_chance_on_heldout_samples(sft_record, results):
    rec = run_cell(run_config(RERANK, results))
    inf = rec["inference"]
    rr = inf["reranker"]
    print(f"rerank {inf['accuracy']:.3f} vote {inf['vote_accuracy']:.3f} upper {inf['upper_bound']:.3f} "
          f"greedy {inf['greedy_accuracy']:.3f}; reranker held-out AUC {rr['heldout_auc']:.3f}, accuracy "
          f"{rr['heldout_accuracy']:.3f} (majority class {rr['heldout_chance']:.3f})")
    assert rr["heldout_auc"] > 0.6
    assert 0 < inf["accuracy"] <= inf["upper_bound"] and inf["vote_accuracy"] <= inf["upper_bound"]
