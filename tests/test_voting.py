"""Vote counting and the offline self-training selection rule on constructed samples."""

from __future__ import annotations

from reft_exp.answers import AnswerSpec
from reft_exp.voting import majority_vote, select_offline_samples, vote_accuracy_by_k

NUM = AnswerSpec(answer_type="numeric", cot="n")
MCQ = AnswerSpec(answer_type="mcq", cot="n")


def test_none_answers_do_not_vote():
    assert majority_vote([None, None, 3.0, None, 5.0, 5.0, None, None], NUM) == 5.0
    assert majority_vote([None, None], NUM) is None
    assert majority_vote([], NUM) is None


def test_ties_go_to_the_first_seen():
    assert majority_vote([7.0, 3.0, 3.0, 7.0], NUM) == 7.0
    assert majority_vote([3.0, 7.0, 7.0, 3.0], NUM) == 3.0
    assert majority_vote(["b", "a", "a", "b", "c"], MCQ) == "b"


def test_numeric_answers_within_tolerance_vote_together():
    # the `tolerance` switch (upstream counts exact values: tests/test_protocol.py): 2.001 and 1.999 are within
    # 1e-2 of 2.0; 2.5 is not
    assert majority_vote([2.5, 2.5, 2.0, 2.001, 1.999], NUM, grouping="tolerance") == 2.0
    assert majority_vote([2.5, 2.5, 2.0, 2.05], NUM, grouping="tolerance") == 2.5


def test_mcq_only_single_letters_vote():
    # "none" (a crashed program) and "the answer is b" must not outvote the letters
    assert majority_vote(["none", "none", "none", "c", "the answer is b", "c", "d"], MCQ) == "c"
    assert majority_vote(["none", "abc"], MCQ) is None


def test_offline_selection_keeps_at_most_ten_unique_correct_plus_ground_truth():
    comps = [f"cot {i % 13}" for i in range(40)]  # 13 distinct texts, each repeated
    correct = [i % 13 != 5 for i in range(40)]  # text "cot 5" is wrong
    out = select_offline_samples(comps, correct, "gold cot", mode="dedup")
    assert out[-1] == "gold cot" and len(out) == 11
    assert len(set(out)) == 11, "duplicates removed"
    assert "cot 5" not in out, "wrong samples never kept"
    assert out[:10] == ["cot 0", "cot 1", "cot 2", "cot 3", "cot 4", "cot 6", "cot 7", "cot 8", "cot 9", "cot 10"]


def test_offline_selection_with_few_or_no_correct_samples():
    # the `dedup` switch; upstream's ground truth twice: tests/test_protocol.py
    assert select_offline_samples(["x", "y"], [False, False], "gold", mode="dedup") == ["gold"]
    assert select_offline_samples(["x", "x", "gold"], [True, True, True], "gold", mode="dedup") == ["x", "gold"]
    assert select_offline_samples(["a", "b"], [True, True], "gold", max_unique=1, mode="dedup") == ["a", "gold"]
    assert select_offline_samples(["x", "y"], [False, False], "gold") == ["gold", "gold"]


def test_vote_accuracy_by_k_averages_random_subsets():
    # one question, gold 5, samples 5 5 3: one sample is right 2/3 of the time; two samples vote 5 unless
    # the pair is (5, 3) in the order 3-first (a tie goes to the first seen): 1/3 + 2/3 * 1/2 = 2/3; all three
    # vote 5. A second question whose samples all miss stays at 0 for every K.
    rows = [{"gold": "5", "samples": [{"pred": 5.0}, {"pred": 5.0}, {"pred": 3.0}]},
            {"gold": "7", "samples": [{"pred": 1.0}, {"pred": None}, {"pred": 2.0}]}]
    curve = vote_accuracy_by_k(rows, NUM, [1, 2, 3, 10], repeats=4000, seed=0)
    assert abs(curve[1] - 2 / 3 / 2) < 0.02
    assert abs(curve[2] - 2 / 3 / 2) < 0.02
    assert curve[3] == curve[10] == 0.5
    assert vote_accuracy_by_k(rows, NUM, [1, 2], repeats=50, seed=3) == vote_accuracy_by_k(rows, NUM, [1, 2], 50, 3)
