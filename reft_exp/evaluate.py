"""Greedy test accuracy: generate, extract, compare. Used by every method every epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reft_exp.answers import AnswerSpec, extract_answers, is_correct, parse_gold
from reft_exp.generation import DecodingConfig, generate_distributed
from reft_exp.prompts import build_prompt
from reft_exp.stages import Stage, checkpoint_id, run_stage, stage_key
from reft_exp.utils import read_jsonl, write_jsonl

# What the greedy evaluation of a checkpoint reads: its stage key holds these, the checkpoint and the asking
# evaluation's settings (header, length, batch). Every method starting from one warm-up with the same settings
# (ReFT, online self-training, GRPO, RLOO, ...) then evaluates it once.
EVAL_READS = ("model", "dataset", "cot", "reward", "executor", "inference.max_new_tokens",
              "accelerate.mixed_precision")
EVAL_OUTPUTS_FILE = "outputs.jsonl"


@dataclass
class EvalResult:
    accuracy: float
    n: int
    n_extracted: int
    predictions: list[dict] = field(default_factory=list)


def score_completions(records: Sequence[dict], completions: Sequence[str], spec: AnswerSpec,
                      executor=None) -> list[dict]:
    """One row per completion (an answer text from :func:`reft_exp.generation.decode_answer`): extracted
    answer, gold, correctness."""
    preds = extract_answers(list(completions), spec, executor=executor)
    rows = []
    for rec, comp, pred in zip(records, completions, preds):
        gold = parse_gold(rec["answer_value"], spec)
        rows.append({"item_id": rec["item_id"], "completion": comp, "pred": pred, "gold": gold,
                     "correct": is_correct(pred, gold, spec)})
    return rows


def eval_result(rows: Sequence[dict]) -> EvalResult:
    """Accuracy over scored rows (:func:`score_completions`)."""
    n_correct = sum(r["correct"] for r in rows)
    return EvalResult(accuracy=n_correct / max(len(rows), 1), n=len(rows),
                      n_extracted=sum(r["pred"] is not None for r in rows), predictions=list(rows))


def greedy_prompts(records: Sequence[dict], cot: str, with_header: bool = False) -> list[str]:
    """SFT-time evaluation: the model writes the whole answer, P-CoT header included (train_sft_model.py);
    RL-time evaluation (``with_header``): the header is part of the prompt (train_rl_reft.py:152-153)."""
    return [build_prompt(r["question"], cot, with_header=with_header) for r in records]


def greedy_eval(accelerator, model, tokenizer, records: Sequence[dict], spec: AnswerSpec,
                max_new_tokens: int, batch_size: int, add_special_tokens: bool = True,
                progress: bool = False, executor=None, *, with_header: bool = False,
                max_length: int | None = None, length_key: str = "inference.max_new_tokens",
                max_prompt_length: int | None = None) -> EvalResult:
    """Greedy decoding on ``records``; accuracy = fraction whose extracted answer matches the gold.

    ``max_length`` (prompt + response tokens over the padded batch, the official limit, train_rl_reft.py:685,
    train_sft_model.py:305) replaces ``max_new_tokens`` when set; a prompt that cannot fit raises a one-line
    ConfigError naming ``length_key``. With ``with_header`` the P-CoT header is in the prompt and the scored
    text is header + completion. ``max_prompt_length``: prompts keep their first that many tokens (the RL
    evaluations: the official test prompts are cut as the training ones, train_rl_reft.py:169, 187-192)."""
    prompts = greedy_prompts(records, spec.cot, with_header)
    outs = generate_distributed(accelerator, model, tokenizer, prompts,
                                DecodingConfig(do_sample=False, max_new_tokens=max_new_tokens), batch_size,
                                add_special_tokens, progress, desc="greedy eval", max_length=max_length,
                                length_key=length_key, max_prompt_length=max_prompt_length)
    return eval_result(score_completions(records, [o[0] for o in outs], spec, executor))


def eval_outputs(records: Sequence[dict], res: EvalResult) -> list[dict]:
    """What the model wrote at an evaluation, one row per question: question, completion, extracted answer,
    gold, correct (written by the runner to the stage's ``outputs/``)."""
    questions = {r["item_id"]: r["question"] for r in records}
    return [{"item_id": row["item_id"], "question": questions.get(row["item_id"]), "completion": row["completion"],
             "pred": row["pred"], "gold": row["gold"], "correct": bool(row["correct"])} for row in res.predictions]


def cached_greedy_eval(ctx, checkpoint: str | Path, settings: dict[str, Any], evaluate: Callable[[], dict],
                       name: str) -> dict:
    """The greedy evaluation of ``checkpoint`` as a cached ``greedy_eval`` stage (keyed by :data:`EVAL_READS`,
    the checkpoint and ``settings``): ``evaluate()`` (metrics + ``outputs``, one row per question) runs only when
    the stage is not in the cache; the outputs are kept in the stage. Returns the metrics with the outputs."""
    cfg = ctx.cfg
    stage = Stage(ctx.cache_dir, "greedy_eval", f"{cfg.model.name}_{cfg.dataset.name}_{ctx.cot}",
                  stage_key(cfg, EVAL_READS, {"checkpoint": checkpoint_id(checkpoint)}, node=settings))

    def compute(folder: Path) -> dict:
        metrics = evaluate()
        rows = metrics.pop("outputs")
        if ctx.accelerator.is_main_process:
            write_jsonl(folder / EVAL_OUTPUTS_FILE, rows)
        return metrics

    ctx.note_stage(stage, run_stage(stage, ctx.accelerator, compute), name=name)
    return stage.meta() | {"outputs": read_jsonl(stage.dir / EVAL_OUTPUTS_FILE)}
