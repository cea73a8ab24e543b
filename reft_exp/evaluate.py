"""Greedy test accuracy: generate, extract, compare. Used by every method every epoch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from reft_exp.answers import AnswerSpec, extract_answers, is_correct, parse_gold
from reft_exp.generation import DecodingConfig, generate_distributed
from reft_exp.prompts import build_prompt


@dataclass
class EvalResult:
    accuracy: float
    n: int
    n_extracted: int
    predictions: list[dict] = field(default_factory=list)


def score_completions(records: Sequence[dict], completions: Sequence[str], spec: AnswerSpec,
                      executor=None) -> list[dict]:
    """One row per completion: extracted answer, gold, correctness."""
    preds = extract_answers(list(completions), spec, executor=executor)
    rows = []
    for rec, comp, pred in zip(records, completions, preds):
        gold = parse_gold(rec["answer_value"], spec)
        rows.append({"item_id": rec["item_id"], "completion": comp, "pred": pred, "gold": gold,
                     "correct": is_correct(pred, gold, spec)})
    return rows


def greedy_eval(accelerator, model, tokenizer, records: Sequence[dict], spec: AnswerSpec,
                max_new_tokens: int, batch_size: int, add_special_tokens: bool = True,
                progress: bool = False, executor=None) -> EvalResult:
    """Greedy decoding on ``records``; accuracy = fraction whose extracted answer matches the gold."""
    # At evaluation time the model writes the whole answer, P-CoT header included (as in upstream SFT eval).
    prompts = [build_prompt(r["question"], spec.cot) for r in records]
    outs = generate_distributed(accelerator, model, tokenizer, prompts,
                                DecodingConfig(do_sample=False, max_new_tokens=max_new_tokens), batch_size,
                                add_special_tokens, progress, desc="greedy eval")
    rows = score_completions(records, [o[0] for o in outs], spec, executor)
    n_correct = sum(r["correct"] for r in rows)
    return EvalResult(accuracy=n_correct / max(len(rows), 1), n=len(rows),
                      n_extracted=sum(r["pred"] is not None for r in rows), predictions=rows)
