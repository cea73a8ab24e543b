"""Sampling as a cached stage: K completions per question from a named checkpoint on a split, each scored
once and stored as JSONL, reused by every consumer (offline self-training, majority voting, reranking).

A samples stage is keyed by the checkpoint (its stage folder name, which carries the hash of everything
that determined it, plus the checkpoint name), the split, the decoding values, the data and the reward
settings. Two cells asking for the same samples therefore read one file: the sampler runs once.

``samples.jsonl``: one line per question::

    {"item_id": ..., "question": ..., "gold": ..., "samples": [{"text": <full CoT>, "pred": ..., "correct": bool,
                                               "score": <reward>}, ...]}

``text`` is the chain of thought as an SFT target would hold it: prompt and completion are decoded together and
cut at the prompt (reft_exp.generation.decode_answer); for P-CoT the program header, part of the prompt at
sampling time as in the official code (sampling.py:76-77), stays in front of the completion.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from reft_exp.answers import parse_gold, reward
from reft_exp.config import SamplingConfig
from reft_exp.context import RunContext
from reft_exp.evaluate import score_completions
from reft_exp.generation import DecodingConfig, generate_distributed
from reft_exp.models import load_causal_lm, load_tokenizer
from reft_exp.rl.rollout import rl_prompts
from reft_exp.stages import Stage, checkpoint_id, run_stage, stage_key
from reft_exp.utils import atomic_write_text

log = logging.getLogger(__name__)
SAMPLES_FILE = "samples.jsonl"
# What a samples stage reads besides its sampling node (its key); the stages it starts from: the checkpoint and
# the split.
READS = ("model", "dataset", "cot", "reward", "executor", "accelerate.mixed_precision", "root.seed")


@dataclass
class SampleSet:
    stage: Stage
    rows: list[dict]  # one per question, in split order

    @property
    def path(self) -> Path:
        return self.stage.dir / SAMPLES_FILE


def draw_samples(ctx: RunContext, checkpoint: str | Path, records: Sequence[dict], sc: SamplingConfig,
                 desc: str = "sample", length_key: str = "sampling.max_length") -> list[dict]:
    """Generate ``sc.num_samples`` completions per record from ``checkpoint`` and score each."""
    cfg, acc = ctx.cfg, ctx.accelerator
    tokenizer = load_tokenizer(checkpoint, cfg.model)
    model = load_causal_lm(checkpoint, cfg.model).to(acc.device)
    # prompt + completion <= sc.max_length tokens (upstream Sampling scripts: max_length 1024, sampling.py:156);
    # max_new_tokens only when max_length is null
    decoding = DecodingConfig(do_sample=True, temperature=sc.temperature, top_k=sc.top_k, top_p=sc.top_p,
                              max_new_tokens=sc.max_new_tokens, num_return_sequences=sc.num_samples,
                              max_length=sc.max_length)
    # Fixed sampling seed per (run seed, process): the samples are a function of the stage key.
    torch.manual_seed(cfg.root.seed + acc.process_index)
    outs = generate_distributed(acc, model, tokenizer, rl_prompts(records, ctx.cot), decoding, sc.batch_size,
                                cfg.model.add_special_tokens, cfg.root.progress and acc.is_main_process, desc,
                                length_key=length_key)
    del model
    return score_samples(records, outs, ctx.spec, ctx.executor_if_needed)


def score_samples(records: Sequence[dict], outs: Sequence[Sequence[str]], spec, executor=None) -> list[dict]:
    """The post-generation half of :func:`draw_samples`: each record's answer texts (decoded with the prompt, so
    for P-CoT the header of the prompt + the completion: the whole program) scored into samples.jsonl rows."""
    flat_records = [r for r, per_q in zip(records, outs) for _ in per_q]
    texts = [c for per_q in outs for c in per_q]
    scored = score_completions(flat_records, texts, spec, executor)
    rows, start = [], 0
    for rec, per_q in zip(records, outs):
        chunk = scored[start : start + len(per_q)]
        start += len(per_q)
        gold = parse_gold(rec["answer_value"], spec)
        rows.append({"item_id": rec["item_id"], "question": rec["question"], "gold": gold, "samples": [
            {"text": s["completion"], "pred": s["pred"], "correct": bool(s["correct"]),
             "score": reward(s["pred"], gold, spec)} for s in chunk]})
    return rows


def samples_stage_of(ctx: RunContext, checkpoint: str | Path, split: str, sc: SamplingConfig) -> Stage:
    """The samples stage of ``checkpoint`` on ``split`` (its folder and hash; nothing is drawn or read), so
    that a consumer can key its own stage on it and draw the samples only when it must compute."""
    cfg = ctx.cfg
    label = f"{cfg.model.name}_{cfg.dataset.name}_{ctx.cot}_{split}_k{sc.num_samples}"
    return Stage(ctx.cache_dir, "samples", label,
                 stage_key(cfg, READS, {"checkpoint": checkpoint_id(checkpoint), "split": split}, node=sc))


def sample_stage(ctx: RunContext, checkpoint: str | Path, split: str, sc: SamplingConfig, *,
                 length_key: str = "sampling.max_length", name: str | None = None) -> SampleSet:
    """The samples of ``checkpoint`` on ``split``: drawn once (a cached stage), then read from disk.
    ``length_key``: the config key of ``sc.max_length``, named when a prompt cannot fit; ``name``: the stage's
    name in the cell's record and timings (default ``samples_<split>``)."""
    timer = name or f"sample_{split}"
    name = name or f"samples_{split}"
    records = ctx.splits[split][: sc.max_questions] if sc.max_questions else ctx.splits[split]
    ckpt = checkpoint_id(checkpoint)
    stage = samples_stage_of(ctx, checkpoint, split, sc)

    def compute(folder: Path) -> dict:
        with ctx.timer(timer):
            rows = draw_samples(ctx, checkpoint, records, sc, desc=f"sample {split} x{sc.num_samples}",
                               length_key=length_key)
        if ctx.accelerator.is_main_process:
            atomic_write_text(folder / SAMPLES_FILE, "".join(json.dumps(r) + "\n" for r in rows))
        n = sum(len(r["samples"]) for r in rows)
        n_correct = sum(s["correct"] for r in rows for s in r["samples"])
        meta = {"checkpoint": str(checkpoint), "split": split, "questions": len(rows), "samples": n,
                "sample_accuracy": n_correct / max(n, 1),
                "any_correct": sum(any(s["correct"] for s in r["samples"]) for r in rows) / max(len(rows), 1)}
        log.info("samples %s of %s: %d questions x %d, %.1f%% correct, %.1f%% of questions with one correct",
                 split, ckpt, len(rows), sc.num_samples, 100 * meta["sample_accuracy"], 100 * meta["any_correct"])
        return meta

    reused = run_stage(stage, ctx.accelerator, compute)
    ctx.note_stage(stage, reused, name=name)
    rows = read_samples(stage.dir / SAMPLES_FILE)
    if [r["item_id"] for r in rows] != [r["item_id"] for r in records]:
        raise RuntimeError(f"{stage.dir / SAMPLES_FILE}: its questions are not those of the {split} split "
                           f"(stale or foreign cache?); delete the folder to resample")
    return SampleSet(stage=stage, rows=rows)


def read_samples(path: str | Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
