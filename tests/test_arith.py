"""The generated task: deterministic, upstream schema, correct annotations in both CoT styles."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import run_config

from reft_exp.answers import AnswerSpec, extract_answers, parse_gold
from reft_exp.config import ConfigError
from reft_exp.data import load_splits
from reft_exp.data.arith import generate_arith
from reft_exp.prompts import build_prompt, build_target, program_header


def test_deterministic_and_schema():
    a = generate_arith(7, 200, 50, "n")
    b = generate_arith(7, 200, 50, "n")
    assert a == b
    assert generate_arith(8, 200, 50, "n") != a
    assert len(a["train"]) == 200 and len(a["test"]) == 50
    for split in ("train", "test"):
        for r in a[split]:
            assert set(r) == {"item_id", "question", "answer_cot", "answer_value"}
            assert isinstance(r["answer_value"], str)
    train_q = {r["question"] for r in a["train"]}
    assert not train_q & {r["question"] for r in a["test"]}, "train and test must be disjoint"


def test_ncot_targets_extract_to_gold():
    recs = generate_arith(3, 500, 0, "n")["train"]
    spec = AnswerSpec(answer_type="numeric", cot="n")
    preds = extract_answers([build_target(r, "n") for r in recs], spec)
    assert all(p == parse_gold(r["answer_value"], spec) for p, r in zip(preds, recs))


def test_pcot_programs_return_gold():
    recs = generate_arith(3, 500, 0, "p")["train"]
    for r in recs:
        assert r["answer_cot"].startswith(program_header(r["question"]))
        ns: dict = {}
        exec(r["answer_cot"], ns)  # our own generated programs, not model output
        assert ns["solution"]() == int(r["answer_value"])


def test_both_cots_share_questions_and_answers():
    n = generate_arith(5, 100, 20, "n")
    p = generate_arith(5, 100, 20, "p")
    for split in ("train", "test"):
        assert [r["question"] for r in n[split]] == [r["question"] for r in p[split]]
        assert [r["answer_value"] for r in n[split]] == [r["answer_value"] for r in p[split]]


def test_difficulty_mix():
    recs = generate_arith(1234, 2000, 0, "n")["train"]
    steps = Counter(r["answer_cot"].count(" = ") for r in recs)
    assert set(steps) == {1, 2, 3}, steps
    assert all(steps[k] > 300 for k in (1, 2, 3))
    distractors = sum("has" in r["question"].split(".", 1)[1] for r in recs)
    assert distractors > 200, "distractor sentences should appear"
    values = Counter(r["answer_value"] for r in recs)
    assert values.most_common(1)[0][1] < 0.1 * len(recs), "no answer value should dominate"


def test_prompt_format_matches_upstream():
    assert build_prompt("Q?", "n") == "Question:\nQ?\nAnswer reasoning:\n"
    assert build_prompt("Q?", "p", with_header=True) == 'Question:\nQ?\nAnswer reasoning:\ndef solution():\n    """Q?"""\n'
    rec = {"answer_cot": "2 + 2 = 4.", "answer_value": "4"}
    assert build_target(rec, "n") == "2 + 2 = 4.\nTherefore, the answer is: 4"


def test_program_forms_give_several_valid_programs_per_kind_of_question():
    """With several forms each record's program takes one of them and every one returns the gold answer; the
    N-CoT file of the same draw has the same questions (the form is drawn whatever the CoT style)."""
    forms = ["stepwise", "declare_first", "one_expression"]
    mixed = generate_arith(3, 600, 0, "p", max_steps=3, program_forms=forms)["train"]
    seen = Counter()
    for r in mixed:
        ns: dict = {}
        exec(r["answer_cot"], ns)  # our own generated programs, not model output
        assert ns["solution"]() == int(r["answer_value"])
        lines = r["answer_cot"].split('"""\n', 1)[1].splitlines()
        steps = [i for i, line in enumerate(lines) if "_after_step_" in line.split(" = ")[0]]
        if not steps:
            seen["one_expression"] += 1
            assert lines[-2].startswith("    result = ") and lines[-2].count(" = ") == 1
        elif len(steps) == 1:
            seen["one step"] += 1  # stepwise and declare_first coincide
        else:
            seen["stepwise" if steps[0] == 2 else "declare_first"] += 1
    assert all(seen[f] > 60 for f in [*forms, "one step"]), seen
    ncot = generate_arith(3, 600, 0, "n", max_steps=3, program_forms=forms)["train"]
    assert [r["question"] for r in ncot] == [r["question"] for r in mixed]
    assert [r["answer_value"] for r in ncot] == [r["answer_value"] for r in mixed]


def test_unknown_program_form_is_refused():
    with pytest.raises(ValueError, match="program_forms"):
        generate_arith(3, 10, 0, "p", program_forms=["stepwise", "one_line"])


def test_validation_split_is_disjoint_and_leaves_train_and_test_unchanged():
    plain = generate_arith(1234, 300, 60, "p")
    with_val = generate_arith(1234, 300, 60, "p", val_size=80)
    assert with_val["train"] == plain["train"] and with_val["test"] == plain["test"] and "val" not in plain
    val = with_val["val"]
    assert len(val) == 80 and val[0]["item_id"] == "arith_val_0"
    seen = {r["question"] for split in ("train", "test") for r in with_val[split]}
    assert not seen & {r["question"] for r in val}


def test_eval_split_val_puts_the_validation_questions_where_every_evaluation_reads(tmp_path):
    small = ["dataset.train_size=100", "dataset.test_size=20", "dataset.val_size=30"]
    cfg = run_config([*small, "dataset.eval_split=val", "tag=val"], tmp_path)
    splits = load_splits(cfg.dataset, "n")
    assert [r["item_id"] for r in splits["test"]] == [f"arith_val_{i}" for i in range(30)]
    assert splits["train"] == load_splits(run_config(small, tmp_path).dataset, "n")["train"]
    with pytest.raises(ConfigError, match="dataset.eval_split=val needs a tag"):
        run_config([*small, "dataset.eval_split=val"], tmp_path)
    with pytest.raises(ConfigError, match="needs dataset.val_size >= 1"):
        run_config(["dataset.eval_split=val", "tag=val"], tmp_path)
