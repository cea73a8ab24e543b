"""Answer extraction, correctness and reward (reft_exp.answers), on the real upstream files and on
realistic model outputs, for both ``extraction`` modes and both ``mcq_partial`` modes."""

from __future__ import annotations

import json
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from reft_exp.answers import (
    ANSWER_TRIGGER,
    TRIGGER_SPLIT,
    AnswerSpec,
    extract_answers,
    is_correct,
    parse_gold,
    reward,
)
from reft_exp.config import RewardConfig

SHARED = Path(os.environ.get("REFT_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))
REFT_DATA = SHARED / "data" / "reft"


def _shared_json(name: str) -> list[dict]:
    path = REFT_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not available (set REFT_SHARED_DIR to the folder holding data/reft)")
    return json.loads(path.read_text())


def spec(answer_type: str = "numeric", cot: str = "n", extraction: str = "upstream",
         mcq_partial: str = "code") -> AnswerSpec:
    return AnswerSpec.from_config(RewardConfig(extraction=extraction, mcq_partial=mcq_partial), answer_type, cot)


def score(completion: str, gold: str, s: AnswerSpec) -> tuple[object, float]:
    [pred] = extract_answers([completion], s)
    return pred, reward(pred, parse_gold(gold, s), s)


# ---------------------------------------------------------------------------------- real upstream data
@pytest.mark.parametrize("extraction", ["upstream", "lenient"])
def test_all_svamp_ncot_targets_extract_to_their_answer(extraction: str) -> None:
    records = _shared_json("svamp_nl.json")
    assert len(records) == 3076
    s = spec(extraction=extraction)
    targets = [r["answer_cot"].strip() + TRIGGER_SPLIT + r["answer_value"].strip() for r in records]
    preds = extract_answers(targets, s)
    golds = [parse_gold(r["answer_value"], s) for r in records]
    assert all(isinstance(p, float) for p in preds)
    assert preds == golds
    assert [reward(p, g, s) for p, g in zip(preds, golds)] == [1.0] * len(records)
    # the wrong gold gets the partial reward, every time
    assert {reward(p, g + 1, s) for p, g in zip(preds, golds)} == {0.1}


def test_mathqa_test_golds_are_letters() -> None:
    records = _shared_json("mathqa_test_set.json")
    s = spec("mcq")
    golds = {parse_gold(r["answer_value"], s) for r in records}
    assert golds == {"a", "b", "c", "d", "e"}
    target = "some reasoning" + TRIGGER_SPLIT + records[0]["answer_value"]
    assert score(target, records[0]["answer_value"], s) == ("a", 1.0)


def test_trigger_constants() -> None:
    assert TRIGGER_SPLIT == "\nTherefore, the answer is: "
    assert ANSWER_TRIGGER == "Therefore, the answer is: "


# ------------------------------------------------------------------------------------- N-CoT numeric
COT = "She sells 16 - 3 - 4 = 9 eggs a day, so she makes 9 * 2 = 18 dollars."

NUMERIC_CASES = [
    # completion tail, gold, (upstream pred, reward), (lenient pred, reward)
    ("18", "18", (18.0, 1.0), (18.0, 1.0)),
    ("18.0", "18", (18.0, 1.0), (18.0, 1.0)),
    (" 18 ", "18", (18.0, 1.0), (18.0, 1.0)),
    ("18.", "18", (18.0, 1.0), (18.0, 1.0)),  # Python float() takes "18."
    ("18.005", "18", (18.005, 1.0), (18.005, 1.0)),  # within 1e-2
    ("18.02", "18", (18.02, 0.1), (18.02, 0.1)),  # outside 1e-2: extracted but wrong
    ("17", "18", (17.0, 0.1), (17.0, 0.1)),
    ("-3", "-3", (-3.0, 1.0), (-3.0, 1.0)),
    ("1,234", "1,234", (None, 0.0), (1234.0, 1.0)),  # gold side strips separators; upstream pred does not
    ("$18", "18", (None, 0.0), (18.0, 1.0)),
    ("$1,600.50", "1600.5", (None, 0.0), (1600.5, 1.0)),
    ("**18**", "18", (None, 0.0), (18.0, 1.0)),
    ("`18`", "18", (None, 0.0), (18.0, 1.0)),
    ("18 dollars", "18", (None, 0.0), (None, 0.0)),  # lenient does not search for numbers in words
    ("18.\n\nQuestion:\nTom has", "18", (None, 0.0), (18.0, 1.0)),  # ran on past the answer
    ("\u22125", "-5", (None, 0.0), (-5.0, 1.0)),  # Unicode minus
    ("1/2", "0.5", (None, 0.0), (0.5, 1.0)),
    ("3/0", "3", (None, 0.0), (None, 0.0)),
    ("25%", "25", (None, 0.0), (25.0, 1.0)),
    ("\\boxed{42}", "42", (None, 0.0), (42.0, 1.0)),
    ("nan", "18", (None, 0.1), (None, 0.1)),  # float("nan") parses: extracted, never correct
    ("", "18", (None, 0.0), (None, 0.0)),
]


@pytest.mark.parametrize("tail, gold, upstream, lenient", NUMERIC_CASES)
def test_ncot_numeric(tail: str, gold: str, upstream: tuple, lenient: tuple) -> None:
    completion = COT + TRIGGER_SPLIT + tail
    for mode, (want_pred, want_reward) in (("upstream", upstream), ("lenient", lenient)):
        pred, r = score(completion, gold, spec(extraction=mode))
        if tail == "nan":
            assert pred != pred  # NaN
        else:
            assert pred == want_pred, (mode, tail)
        assert r == want_reward, (mode, tail)


def test_ncot_numeric_trigger_handling() -> None:
    up, le = spec(), spec(extraction="lenient")
    # the last trigger wins
    assert score(f"a{TRIGGER_SPLIT}5\nb{TRIGGER_SPLIT}7", "7", up) == (7.0, 1.0)
    # no trigger: upstream tries the whole text (split(trigger)[-1]); a sentence gives no answer
    assert score("The answer is 18", "18", up) == (None, 0.0)
    assert score("18", "18", up) == (18.0, 1.0)
    # trigger without the preceding newline: only lenient reads it
    assert score(f"{COT} {ANSWER_TRIGGER}18", "18", up) == (None, 0.0)
    assert score(f"{COT} {ANSWER_TRIGGER}18", "18", le) == (18.0, 1.0)
    # trigger without the colon is not the trigger
    assert score(f"{COT}\nTherefore, the answer is 18", "18", le) == (None, 0.0)
    # the model restarted a new question: upstream keeps the text after the last "Answer reasoning:"
    restarted = f"{COT}{TRIGGER_SPLIT}18\n\nQuestion:\nHow many?\nAnswer reasoning:\nx{TRIGGER_SPLIT}3"
    assert score(restarted, "3", up) == (3.0, 1.0)


def test_custom_reward_values_and_tolerance() -> None:
    cfg = RewardConfig(correct=2.0, partial=0.5, no_answer=-1.0, tolerance=0.5)
    s = AnswerSpec.from_config(cfg, "numeric", "n")
    assert (s.correct_reward, s.partial_reward, s.no_answer_reward, s.tolerance) == (2.0, 0.5, -1.0, 0.5)
    assert reward(18.4, 18.0, s) == 2.0
    assert reward(18.6, 18.0, s) == 0.5
    assert reward(None, 18.0, s) == -1.0
    assert not is_correct("not a number", 18.0, s)


# ----------------------------------------------------------------------------------------- N-CoT MCQ
MCQ_CASES = [
    # tail, gold, upstream pred, lenient pred
    ("c", "c", "c", "c"),
    ("C", "c", "c", "c"),
    ("'c'", "c", "c", "c"),
    ('"c" ', "c", "c", "c"),
    ("b", "c", "b", "b"),
    ("c ) 30", "c", "c ) 30", "c"),
    ("(c)", "c", "(c)", "c"),
    ("c.", "c", "c.", "c"),
    ("**C**", "c", "**c**", "c"),
    ("option c", "c", "option c", "c"),
    ("a total of 30", "a", "a total of 30", "a total of 30"),  # not a letter answer
    ("30", "c", "30", "30"),
]


@pytest.mark.parametrize("tail, gold, upstream_pred, lenient_pred", MCQ_CASES)
def test_ncot_mcq_both_modes(tail: str, gold: str, upstream_pred: str, lenient_pred: str) -> None:
    completion = "The profit is 38 %." + TRIGGER_SPLIT + tail
    for extraction, want in (("upstream", upstream_pred), ("lenient", lenient_pred)):
        for mcq_partial, wrong in (("code", 0.1), ("paper", 0.0)):
            s = spec("mcq", extraction=extraction, mcq_partial=mcq_partial)
            pred, r = score(completion, gold, s)
            assert pred == want
            assert r == (1.0 if want == gold else wrong), (extraction, mcq_partial, tail)


def test_ncot_mcq_is_always_a_string() -> None:
    s = spec("mcq")
    # no trigger: the whole (normalised) text counts as the extracted answer
    assert score("I don't know", "c", s) == ("i dont know", 0.1)
    assert score("I don't know", "c", spec("mcq", mcq_partial="paper")) == ("i dont know", 0.0)
    assert score("", "c", s) == ("", 0.1)


def test_partial_mode_does_not_touch_numeric() -> None:
    s = spec("numeric", mcq_partial="paper")
    assert score(COT + TRIGGER_SPLIT + "17", "18", s) == (17.0, 0.1)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="extraction"):
        AnswerSpec(extraction="fuzzy")
    with pytest.raises(ValueError, match="mcq_partial"):
        AnswerSpec.from_config(RewardConfig(mcq_partial="both"), "mcq", "n")
    with pytest.raises(ValueError, match="answer_type"):
        AnswerSpec(answer_type="letters")


# ---------------------------------------------------------------------------------------------- P-CoT
@dataclass
class _Result:
    answer: object
    error: str | None = None


class _FakeExecutor:
    """Returns pre-set ``solution()`` values; records the programs it was given."""

    def __init__(self, answers: list[object]) -> None:
        self.answers = answers
        self.programs: list[str] = []

    def run(self, programs: list[str]) -> list[_Result]:
        self.programs = list(programs)
        return [_Result(a, None if a is not None else "boom") for a in self.answers]


@pytest.fixture
def fake_execute_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in ``reft_exp.execute`` whose ``program_from_completion`` tags the text it was given."""
    module = types.ModuleType("reft_exp.execute")
    module.program_from_completion = lambda text: f"PROGRAM<{text}>"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "reft_exp.execute", module)


def test_pcot_requires_an_executor() -> None:
    with pytest.raises(ValueError, match="executor"):
        extract_answers(["def solution():\n    return 1"], spec(cot="p"))


def test_pcot_numeric_upstream(fake_execute_module: None) -> None:
    s = spec(cot="p")
    ex = _FakeExecutor([72, 72.004, None, "abc", True, "1,234"])
    preds = extract_answers(["  prog0\n", "Q\nAnswer reasoning:\nprog1", "p2", "p3", "p4", "p5"], s, executor=ex)
    assert ex.programs[:2] == ["PROGRAM<prog0>", "PROGRAM<prog1>"]  # stripped; text after the prompt trigger
    assert preds == [72.0, 72.004, None, None, 1.0, None]
    gold = parse_gold("72", s)
    assert [reward(p, gold, s) for p in preds] == [1.0, 1.0, 0.0, 0.0, 0.1, 0.0]


def test_pcot_numeric_lenient_reads_string_results(fake_execute_module: None) -> None:
    s = spec(cot="p", extraction="lenient")
    preds = extract_answers(["a", "b", "c"], s, executor=_FakeExecutor(["1,234", "$5", 7]))
    assert preds == [1234.0, 5.0, 7.0]


def test_pcot_mathqa_mcq(fake_execute_module: None) -> None:
    # upstream: str(result).lower() with quotes removed; a crashed program (None) gives "none", which
    # counts as extracted, so it earns the partial reward under mcq_partial=code
    ex = _FakeExecutor(["C", "'b'", None, 30])
    completions = ["p0", "p1", "p2", "p3"]
    gold = "c"
    for mcq_partial, wrong in (("code", 0.1), ("paper", 0.0)):
        s = spec("mcq", cot="p", mcq_partial=mcq_partial)
        preds = extract_answers(completions, s, executor=ex)
        assert preds == ["c", "b", "none", "30"]
        assert [reward(p, parse_gold(gold, s), s) for p in preds] == [1.0, wrong, wrong, wrong]


def test_pcot_with_the_real_executor_on_svamp_programs() -> None:
    """All 3,043 upstream SVAMP P-CoT targets run through reft_exp.execute and give their answer_value."""
    execute = pytest.importorskip("reft_exp.execute", reason="reft_exp.execute not available")
    records = _shared_json("svamp_python_sdp.json")
    assert len(records) == 3043
    s = spec(cot="p")
    with execute.ProgramExecutor(workers=2) as executor:
        preds = extract_answers([r["answer_cot"] for r in records], s, executor=executor)
    golds = [parse_gold(r["answer_value"], s) for r in records]
    assert [reward(p, g, s) for p, g in zip(preds, golds)] == [1.0] * len(records)
    # a program that crashes or has no solution() gives no answer
    with execute.ProgramExecutor(workers=1) as executor:
        bad = ["def solution():\n    return 1 / 0", "x = 1"]
        assert extract_answers(bad, s, executor=executor) == [None, None]
        assert extract_answers(bad, spec("mcq", cot="p"), executor=executor) == ["none", "none"]


def test_vote_candidate() -> None:
    from reft_exp.answers import vote_candidate

    mcq, num = spec("mcq"), spec("numeric")
    assert [vote_candidate(p, mcq) for p in ["c", "none", "c ) 30", "", None]] == ["c", None, None, None, None]
    assert [vote_candidate(p, num) for p in [18.0, None]] == [18.0, None]
