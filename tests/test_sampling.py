"""Sampling stage, self-training data, voting/reranking bookkeeping (issue 5). The learning side is in
test_learning.py; here: the rules on constructed samples, and that samples are drawn once and reused."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_config

from reft_exp import sampling
from reft_exp.answers import AnswerSpec
from reft_exp.config import OfflineSTConfig
from reft_exp.inference.rerank import (
    heldout_split,
    rerank_accuracy,
    reranker_examples,
    roc_auc,
    scores_auc_within,
    uniform_pick_accuracy,
    within_question_auc,
)
from reft_exp.methods.offline_st import offline_records
from reft_exp.sampling import SampleSet, read_samples

pytestmark = pytest.mark.seconds(8)  # its measured time in `make test`: orders the collection (conftest)


def _s(text, pred, correct):
    return {"text": text, "pred": pred, "correct": correct, "score": 1.0 if correct else 0.1}


ROWS = [
    {"item_id": "q1", "gold": 5.0, "samples": [_s("a=5", 5.0, True), _s("b=4", 4.0, False), _s("a=5", 5.0, True),
                                               _s("c=5", 5.0, True), _s("junk", None, False)]},
    {"item_id": "q2", "gold": 7.0, "samples": [_s("x=1", 1.0, False), _s("y=1", 1.0, False), _s("z", None, False),
                                               _s("w=7", 7.0, True)]},
    {"item_id": "q3", "gold": 2.0, "samples": [_s("n1", None, False), _s("n2", None, False)]},
]
TRAIN = [{"item_id": f"q{i}", "question": f"Q{i}?", "answer_cot": f"gt{i}", "answer_value": str(i)}
         for i in (1, 2, 3, 4)]


def test_offline_records_keep_unique_correct_samples_plus_ground_truth():
    samples = SampleSet(stage=None, rows=ROWS)  # type: ignore[arg-type]
    truth = "gt{}\nTherefore, the answer is: {}"

    def by_question(oc: OfflineSTConfig) -> dict[str, list[str]]:
        by_q: dict[str, list[str]] = {}
        for r in offline_records(TRAIN, samples, oc, "n"):
            by_q.setdefault(r["item_id"], []).append(r["target"])
        return by_q

    # the official data (train_sl_model.py:76-86): the data file's ground truth plus the samples file, which
    # holds the ground truth again beside the unique correct samples
    by_q = by_question(OfflineSTConfig(max_correct_per_question=10))
    assert by_q["q1"] == ["a=5", "c=5", truth.format(1, 1), truth.format(1, 1)]  # duplicate "a=5" once
    assert by_q["q2"] == ["w=7", truth.format(2, 2), truth.format(2, 2)]
    assert by_q["q3"] == [truth.format(3, 3)] * 2  # nothing correct: the ground truth (twice)
    assert by_q["q4"] == [truth.format(4, 4)]  # not sampled (max_questions): the data file's copy only
    by_q = by_question(OfflineSTConfig(max_correct_per_question=10, data_mode="dedup"))
    assert by_q["q1"] == ["a=5", "c=5", truth.format(1, 1)]  # the switch: the ground truth once
    assert by_q["q3"] == [truth.format(3, 3)]
    one = offline_records(TRAIN, samples, OfflineSTConfig(max_correct_per_question=1, include_ground_truth=False),
                          "n")
    assert [r["target"] for r in one] == ["a=5", "w=7"]


def test_reranker_examples_are_deduplicated_and_labelled():
    ex = reranker_examples({"q1": "Q1?", "q2": "Q2?", "q3": "Q3?"}, SampleSet(stage=None, rows=ROWS), "n")
    q1 = [e for e in ex if e["item_id"] == "q1"]
    assert [e["label"] for e in q1] == [1, 0, 1, 0]  # a=5 (once), b=4, c=5, junk
    assert q1[0]["text"] == "Question:\nQ1?\nAnswer reasoning:\na=5"
    assert len(ex) == 4 + 4 + 2
    train, held = heldout_split(ex, 1 / 3, seed=0)
    assert len({e["item_id"] for e in held}) == 1 and not {e["item_id"] for e in held} & {e["item_id"] for e in train}
    assert len(train) + len(held) == len(ex)


def test_rerank_picks_the_highest_scored_valid_candidate():
    samples = SampleSet(stage=None, rows=ROWS)  # type: ignore[arg-type]
    # q1: the wrong "b=4" scores highest -> wrong; q2: "w=7" highest -> right; q3: no valid candidate -> wrong
    scores = [[0.2, 0.9, None, 0.5, None], [0.1, 0.3, None, 0.8], [None, None]]
    assert rerank_accuracy(samples, scores) == 1 / 3
    scores[0] = [0.9, 0.2, None, 0.9, None]  # tie between two right answers: the first wins, still right
    assert rerank_accuracy(samples, scores) == 2 / 3


def test_a_uniform_pick_among_unique_valid_candidates_is_the_rerankers_floor():
    samples = SampleSet(stage=None, rows=ROWS)  # type: ignore[arg-type]
    # the slots of test_candidates: unique texts with a valid answer (q1: a=5, b=4, c=5; q2: x=1, y=1, w=7)
    slots = [(0, 0), (0, 1), (0, 3), (1, 0), (1, 1), (1, 3)]
    # q1: 2 of 3 unique candidates right, q2: 1 of 3, q3: none -> (2/3 + 1/3 + 0) / 3, below the random
    # sample's (3/5 + 1/4 + 0) / 3 because q1's right "a=5" was drawn twice and counts once
    assert abs(uniform_pick_accuracy(samples, slots) - 1 / 3) < 1e-12
    scores = [[0.2, 0.9, None, 0.5, None], [0.1, 0.3, None, 0.8], [None, None]]
    assert rerank_accuracy(samples, scores) == 1 / 3  # this reranker is no better than knowing nothing
    # and ranks q1's candidates wrong (b=4 over both right ones: 0), q2's right (w=7 over x, y: 1); q3 has none
    assert scores_auc_within(samples, scores) == 0.5


def test_within_question_auc_ignores_telling_easy_questions_from_hard_ones():
    # every sample of the hard question scores below every sample of the easy one: the pooled AUC is high, yet
    # within each question the right and wrong candidates are ranked at random (ties)
    probs = [0.9, 0.9, 0.9, 0.2, 0.2, 0.2]
    labels = [1, 1, 0, 1, 0, 0]
    groups = ["easy"] * 3 + ["hard"] * 3
    assert roc_auc(probs, labels) == 6 / 9  # > 0.5 from the questions' difficulty alone
    assert within_question_auc(probs, labels, groups) == 0.5
    # a ranker that orders each question's candidates right: 1.0 within, whatever the levels
    assert within_question_auc([0.9, 0.95, 0.8, 0.3, 0.1, 0.2], labels, groups) == 1.0
    # a question with one class carries no ranking: left out; none left -> None
    assert within_question_auc([0.4, 0.9, 0.1], [1, 1, 0], ["a", "b", "b"]) == 1.0
    assert within_question_auc([0.4, 0.9], [1, 1], ["a", "b"]) is None


def test_vote_stats_on_constructed_samples():
    from types import SimpleNamespace

    from reft_exp.inference.majority_vote import vote_curve, vote_stats

    inference = SimpleNamespace(curve_ks=[1, 2, 8], curve_repeats=5, vote_grouping="exact")
    ctx = SimpleNamespace(spec=AnswerSpec(), cfg=SimpleNamespace(inference=inference, root=SimpleNamespace(seed=0)))
    samples = SampleSet(stage=None, rows=ROWS)  # type: ignore[arg-type]
    stats = vote_stats(ctx, samples)
    # q1 votes 5 (3 of 4 valid) -> right; q2 votes 1 -> wrong although one sample is right; q3 no vote
    assert stats["vote_accuracy"] == 1 / 3
    assert stats["upper_bound"] == 2 / 3
    assert abs(stats["sample_accuracy"] - (3 / 5 + 1 / 4 + 0) / 3) < 1e-12
    # the curve: K below the largest sample count (5), then all samples (= the vote itself); 8 > 5 is dropped
    curve = vote_curve(ctx, samples)
    assert list(curve) == ["1", "2", "5"]
    assert curve["5"] == stats["vote_accuracy"]


QUICK = ["dataset.train_size=48", "dataset.test_size=12", "sft.epochs=1", "dataset.warmup_epoch.n=1",
         "inference.max_new_tokens=16", "progress=false"]
TEST_SAMPLING = ["inference.sampling.num_samples=3", "inference.sampling.max_new_tokens=16"]
TRAIN_SAMPLING = ["num_samples=2", "max_new_tokens=16"]


def test_samples_are_drawn_once_and_reused_by_every_consumer(tmp_path, monkeypatch):
    from reft_exp.run import run_cell

    calls: list[tuple[str, int, int]] = []
    real = sampling.draw_samples

    def counting(ctx, checkpoint, records, sc, desc="sample", **kwargs):
        calls.append((Path(checkpoint).name, len(records), sc.num_samples))
        return real(ctx, checkpoint, records, sc, desc, **kwargs)

    monkeypatch.setattr(sampling, "draw_samples", counting)
    vote = run_cell(run_config([*QUICK, "inference=majority_vote", *TEST_SAMPLING], tmp_path))
    assert calls == [("best", 12, 3)]
    rows = read_samples(Path(vote["inference"]["samples_stage"]) / sampling.SAMPLES_FILE)
    assert len(rows) == 12 and all(len(r["samples"]) == 3 for r in rows)
    assert {"text", "pred", "correct", "score"} <= set(rows[0]["samples"][0])
    assert vote["inference"]["upper_bound"] >= vote["accuracy"]

    rerank = run_cell(run_config([*QUICK, "inference=rerank", *TEST_SAMPLING,
                                  *[f"inference.reranker.train_sampling.{a}" for a in TRAIN_SAMPLING],
                                  "inference.reranker.epochs=1", "inference.reranker.max_length=64"], tmp_path))
    # the reranker's training samples come from the warm-up: the SFT run's epoch_<dataset.warmup_epoch> checkpoint
    assert calls == [("best", 12, 3), ("epoch_1", 48, 2)], "the test samples are read, not drawn again"
    assert rerank["stages"]["samples_test"]["reused"] is True
    assert rerank["stages"]["samples_train"]["reused"] is False
    assert rerank["inference"]["vote_accuracy"] == vote["accuracy"]  # same samples, same vote
    assert {"heldout_accuracy", "heldout_chance"} <= set(rerank["inference"]["reranker"])

    offline = run_cell(run_config([*QUICK, "method=offline_st", "method.epochs=1", "method.eval_every_steps=2",
                                   *[f"method.sampling.{a}" for a in TRAIN_SAMPLING]], tmp_path))
    assert len(calls) == 2, "offline self-training reads the warm-up samples the reranker used"
    assert offline["stages"]["samples_train"]["reused"] is True
    assert offline["method"]["examples"] >= 48  # the ground truth of every question at least

    # a cell that reuses the finished offline stage neither draws nor reads samples: with the samples
    # folder gone, nothing is drawn again
    import shutil

    shutil.rmtree(offline["stages"]["samples_train"]["dir"])
    again = run_cell(run_config([*QUICK, "method=offline_st", "method.epochs=1", "method.eval_every_steps=2", "tag=again",
                                 *[f"method.sampling.{a}" for a in TRAIN_SAMPLING]], tmp_path))
    assert again["stages"]["offline_st"]["reused"] is True and "samples_train" not in again["stages"]
    assert len(calls) == 2


def test_roc_auc_by_hand():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    # pairs (pos, neg): (0.6, 0.5) win, (0.6, 0.6) tie = 1/2, (0.3, 0.5) loss, (0.3, 0.6) loss -> 1.5 / 4
    assert roc_auc([0.6, 0.3, 0.5, 0.6], [1, 1, 0, 0]) == 1.5 / 4
    assert roc_auc([0.5, 0.7], [1, 1]) is None
