"""Answer extraction, correctness and the ReFT reward, shared by every method and inference mode.

Official semantics (lqtrung1998/mwp_ReFT train_sft_model.py:45-72 / train_rl_reft.py:49-76; docs/answers.md):

- Every completion is first cut to the text after its last ``"\\nAnswer reasoning:\\n"`` and stripped
  (the official code decodes prompt + completion and does this, train_rl_reft.py:294-295, 703, 728; on a
  completion alone it is a no-op unless the model started a new question).
- N-CoT numeric: ``float()`` of the stripped text after the last ``"\\nTherefore, the answer is: "``, else
  None. Without the trigger the whole text is tried (``split(trigger)[-1]``, train_rl_reft.py:66), so a bare
  ``"42"`` counts.
- N-CoT multiple choice: the text after the trigger, lower-cased, quotes removed, stripped; always a string.
- P-CoT: the program's ``solution()`` return value; numeric: ``float()`` of it else None; multiple choice:
  ``str()`` of it normalised like N-CoT (a crashed program gives the string ``"none"``, still "extracted").
  For multiple choice the ``str()`` is taken inside the program's process, of the value itself (upstream
  ``train_rl_reft.py:64``), so a sympy ``Rational(1, 2)`` reads ``"1/2"`` as upstream, not ``"0.5"``.
- Correct: ``|pred - gold| <= tolerance`` (1e-2) for numbers, exact string match for multiple choice.
- Reward: 1 correct, 0.1 ("partial") when an answer was extracted but is wrong, 0 when none was extracted.

Two switches (``reward`` config node): ``mcq_partial`` ("code": multiple choice gets the partial reward too,
as the official code, train_rl_reft.py:300-307; "paper": a wrong multiple-choice answer gets the no-answer
reward) and ``extraction`` ("upstream": as above; "lenient": also reads ``1,234``, ``$5``, ``**7**``, ``1/2``,
``(c)`` ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ANSWER_TRIGGER = "Therefore, the answer is: "
# The official code splits on the trigger preceded by a newline (train_rl_reft.py:51, 66); the target is
# ``cot + "\n" + trigger + value`` (train_rl_reft.py:145).
TRIGGER_SPLIT = "\n" + ANSWER_TRIGGER
# The end of the prompt (``"Question:\n{q}\nAnswer reasoning:\n"``); the official code keeps the text after
# its last copy (train_rl_reft.py:295).
COT_TRIGGER = "\nAnswer reasoning:\n"
MCQ_LETTERS = ("a", "b", "c", "d", "e")
# Appended to a multiple-choice program: solution() then returns str() of the program's own return value,
# taken where the value lives (upstream ``str(res)``, train_rl_reft.py:64: a sympy Rational gives "1/2"; the
# executor would otherwise hand back float 0.5). The default argument binds the program's solution at
# definition time (the program runs with separate globals and locals, as src/python_engine.py:39). A program
# that raises, or has no solution(), still fails, giving None -> "none", as the official code
# (src/python_engine.py:76-80, train_rl_reft.py:64).
MCQ_STR_WRAPPER = "\n\ndef solution(_reft_solution=solution):\n    return str(_reft_solution())\n"

ANSWER_TYPES = ("numeric", "mcq")
COTS = ("n", "p")
MCQ_PARTIAL_MODES = ("code", "paper")
EXTRACTION_MODES = ("upstream", "lenient")


@dataclass(frozen=True)
class AnswerSpec:
    """How answers of one (dataset, cot) pair are read and scored. Build it with :meth:`from_config`."""

    answer_type: str = "numeric"  # numeric | mcq
    cot: str = "n"  # n | p
    tolerance: float = 1e-2
    correct_reward: float = 1.0
    partial_reward: float = 0.1
    no_answer_reward: float = 0.0
    # code (official: wrong MCQ gets the partial reward, train_rl_reft.py:300-307) | paper (gets no_answer)
    mcq_partial: str = "code"
    extraction: str = "upstream"  # upstream | lenient

    def __post_init__(self) -> None:
        for name, allowed in (("answer_type", ANSWER_TYPES), ("cot", COTS),
                              ("mcq_partial", MCQ_PARTIAL_MODES), ("extraction", EXTRACTION_MODES)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"AnswerSpec.{name}={value!r} is not one of {list(allowed)}")

    @classmethod
    def from_config(cls, reward_cfg: Any, answer_type: str, cot: str) -> AnswerSpec:
        """From the ``reward`` config node (a ``RewardConfig`` or a DictConfig with the same keys)."""
        return cls(
            answer_type=answer_type,
            cot=cot,
            tolerance=float(reward_cfg.tolerance),
            correct_reward=float(reward_cfg.correct),
            partial_reward=float(reward_cfg.partial),
            no_answer_reward=float(reward_cfg.no_answer),
            mcq_partial=str(reward_cfg.mcq_partial),
            extraction=str(reward_cfg.extraction),
        )


# ------------------------------------------------------------------------------------------ extraction
def reasoning_part(text: str) -> str:
    """``text.strip().split(cot_trigger)[-1].strip()`` (train_rl_reft.py:295): the text after the last prompt
    trigger."""
    return text.strip().split(COT_TRIGGER)[-1].strip()


def _answer_tail(text: str, extraction: str) -> str:
    """The text after the last answer trigger (the whole text when there is none, as train_rl_reft.py:66)."""
    trigger = ANSWER_TRIGGER if extraction == "lenient" else TRIGGER_SPLIT  # lenient: newline optional
    return text.split(trigger)[-1]


def floatify(value: object) -> float | None:
    """The official ``floatify`` (src/utils.py:39-43): ``float(value)``, or None when that raises."""
    try:
        return float(value)  # type: ignore[arg-type]
    except Exception:  # src/utils.py:42 catches everything (e.g. TypeError from None or a sympy expression)
        return None


_MARKDOWN = "*_`"
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_FRACTION = re.compile(r"([+-]?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")


def parse_number_lenient(text: str) -> float | None:
    """``float()`` first (as src/utils.py:41, so every answer the official code reads parses the same);
    failing that, the first non-empty line without surrounding markdown (``**``, backticks), ``\\boxed{}``,
    a ``$``, a trailing period/comma/``%``, with thousands separators (``1,234``), a Unicode minus and simple
    fractions (``1/2``) handled."""
    value = floatify(text.strip())
    if value is not None:
        return value
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    s = lines[0].strip()
    boxed = re.fullmatch(r"\\boxed\{(.*)\}", s)
    s = boxed.group(1) if boxed else s
    s = s.strip(_MARKDOWN + " ").rstrip(".,;%").strip(_MARKDOWN + " ")
    s = re.sub(r"^([+-]?)\s*\$\s*", r"\1", s.replace("\u2212", "-"))  # "$5", "-$5", "$ 5"
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    fraction = _FRACTION.fullmatch(s)
    if fraction:
        denominator = float(fraction.group(2))
        return float(fraction.group(1)) / denominator if denominator else None
    return floatify(s)


def normalize_mcq(text: str, extraction: str = "upstream") -> str:
    """Upstream (train_rl_reft.py:68): lower-cased, quotes removed, stripped. Lenient: also reduce ``(c)``,
    ``c ) 30``, ``c.``, ``option c``, ``**C**`` to the bare letter; anything else as in the upstream mode."""
    s = text.lower().replace('"', "").replace("'", "").strip()
    if extraction != "lenient":
        return s
    t = s.strip(_MARKDOWN + " ")
    t = re.sub(r"^(?:the\s+)?(?:option|answer|choice)\s*(?:is\s*)?:?\s*", "", t)
    letter = re.match(r"^\(?([a-e])\s*(?:[).:\]]|$)", t)
    return letter.group(1) if letter else s


def extract_ncot_numeric(text: str, extraction: str = "upstream") -> float | None:
    """N-CoT numeric answer: ``float()`` of the text after the last trigger (see module docstring)."""
    tail = _answer_tail(reasoning_part(text), extraction).strip()
    return parse_number_lenient(tail) if extraction == "lenient" else floatify(tail)


def extract_ncot_mcq(text: str, extraction: str = "upstream") -> str:
    """N-CoT multiple-choice answer: the normalised text after the last trigger; always a string."""
    return normalize_mcq(_answer_tail(reasoning_part(text), extraction), extraction)


def _program_answer(value: object, spec: AnswerSpec) -> object | None:
    """A P-CoT ``solution()`` return value as compared (``floatify`` / ``str(...).lower()...``,
    train_rl_reft.py:62-65)."""
    if spec.answer_type == "mcq":
        return normalize_mcq(str(value), spec.extraction)  # None -> "none", as train_rl_reft.py:64
    if spec.extraction == "lenient" and isinstance(value, str):
        return parse_number_lenient(value)
    return floatify(value)


def extract_answers(completions: Sequence[str], spec: AnswerSpec, executor: Any = None) -> list[object | None]:
    """Extract one answer per completion. N-CoT: numeric -> ``float | None``, mcq -> ``str``. P-CoT runs the
    programs together through ``executor`` (a ``reft_exp.execute.ProgramExecutor``), which is required."""
    if spec.cot == "n":
        if spec.answer_type == "mcq":
            return [extract_ncot_mcq(c, spec.extraction) for c in completions]
        return [extract_ncot_numeric(c, spec.extraction) for c in completions]
    if executor is None:
        raise ValueError("P-CoT answers come from running the programs: pass executor=ProgramExecutor(...) "
                         "to extract_answers")
    from reft_exp.execute import program_from_completion  # lazy: the executor module is optional here

    programs = [program_from_completion(reasoning_part(c)) for c in completions]
    if spec.answer_type == "mcq":
        programs = [p + MCQ_STR_WRAPPER for p in programs]
    results = executor.run(programs)
    if len(results) != len(programs):
        raise RuntimeError(f"executor returned {len(results)} results for {len(programs)} programs")
    return [_program_answer(r.answer, spec) for r in results]


# ------------------------------------------------------------------------------------ correctness/reward
def parse_gold(value: str | float | int, spec: AnswerSpec) -> object:
    """Gold ``answer_value`` as compared: a float for numeric tasks (thousands separators removed, as the
    official code for GSM8K/SVAMP, train_rl_reft.py:55-56), the normalised letter for multiple choice."""
    if spec.answer_type == "numeric":
        return float(str(value).replace(",", "").strip())
    return normalize_mcq(str(value))


def is_correct(pred: object | None, gold: object, spec: AnswerSpec) -> bool:
    """Numeric: ``|pred - gold| <= tolerance``; multiple choice: exact string match with the gold letter."""
    if pred is None:
        return False
    if spec.answer_type == "numeric":
        try:
            return abs(float(pred) - float(gold)) <= spec.tolerance  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            return False
    return str(pred) == str(gold)


def reward(pred: object | None, gold: object, spec: AnswerSpec) -> float:
    """1 correct / 0.1 extracted but wrong / 0 nothing extracted (values from the config). With
    ``mcq_partial="paper"`` a wrong multiple-choice answer gets the no-answer reward instead of the partial."""
    if pred is None:
        return spec.no_answer_reward
    if is_correct(pred, gold, spec):
        return spec.correct_reward
    if spec.answer_type == "mcq" and spec.mcq_partial == "paper":
        return spec.no_answer_reward
    return spec.partial_reward


def vote_candidate(pred: object | None, spec: AnswerSpec) -> object | None:
    """The answer as a majority-vote candidate, or None when it must not vote: the official vote
    (sampling.py:186-188) keeps only single-character multiple-choice answers (a crashed program's
    ``"none"`` does not vote)."""
    if spec.answer_type == "mcq" and pred is not None and len(str(pred)) != 1:
        return None
    return pred


def rerank_candidate(pred: object | None, spec: AnswerSpec) -> object | None:
    """The answer as a reranking candidate, or None: upstream's reranker keeps only multiple-choice answers
    that are one LETTER (train_reward_model.py:294-298: ``isalpha()`` and length 1; a digit does not count,
    although it votes in ``sampling.py``)."""
    cand = vote_candidate(pred, spec)
    if spec.answer_type == "mcq" and cand is not None and not str(cand).strip().lower().isalpha():
        return None
    return cand
