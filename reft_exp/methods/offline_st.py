"""Offline self-training (the official baseline, train_sl_model.py:328-344): learn from the warm-up model's
own correct samples.

1. Sample ``K`` responses per TRAIN question from the SFT warm-up checkpoint (a cached ``samples`` stage,
   shared with the reranker's training data);
2. keep up to ``max_correct_per_question`` unique correct ones per question, plus the ground truth
   (:func:`reft_exp.voting.select_offline_samples`): by default as the official code, whose training files
   are the data file and the samples file, so the ground truth comes twice and a sample equal to it takes a
   slot (train_sl_model.py:76-86, 328-344; ``data_mode``);
3. fine-tune the BASE model on that set with the SFT recipe (the ``sft`` node) for ``epochs`` epochs,
   greedy test accuracy every ``eval_every_steps`` optimizer steps (per dataset, the OffSL scripts; null =
   every epoch), the best reported.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from reft_exp.config import OfflineSTConfig
from reft_exp.context import RunContext
from reft_exp.methods.sft import sft_checkpoint, sft_stage, train_supervised
from reft_exp.prompts import build_target
from reft_exp.runner import training_stage
from reft_exp.sampling import SampleSet, sample_stage, samples_stage_of
from reft_exp.stages import Stage
from reft_exp.voting import select_offline_samples

log = logging.getLogger(__name__)
# What the offline self-training stage reads (its key); its upstreams: the warm-up's samples, the base model.
READS = ("model", "dataset", "cot", "sft", "method", "reward", "executor", "accelerate.mixed_precision",
         "root.seed")


def offline_records(train: list[dict], samples: SampleSet, oc: OfflineSTConfig, cot: str) -> list[dict]:
    """The self-training set: per question its kept correct samples (+ the ground truth), as records whose
    ``target`` is the text to learn. Questions that were not sampled keep only their ground truth (once)."""
    by_id = {r["item_id"]: r for r in samples.rows}
    out = []
    for rec in train:
        truth = build_target(rec, cot)
        row = by_id.get(rec["item_id"])
        texts = [s["text"] for s in row["samples"]] if row else []
        correct = [s["correct"] for s in row["samples"]] if row else []
        if row is None:  # not sampled: only the data file's copy of the ground truth
            kept = [truth]
        else:
            kept = select_offline_samples(texts, correct, truth, oc.max_correct_per_question, oc.data_mode)
        if not oc.include_ground_truth:
            kept = [t for t in kept if t.strip() != truth.strip()]
        out += [{"item_id": rec["item_id"], "question": rec["question"], "target": t,
                 "ground_truth": t.strip() == truth.strip()} for t in kept]
    return out


def offline_st_stage(ctx: RunContext) -> tuple[Stage, dict]:
    cfg, oc = ctx.cfg, ctx.cfg.method
    sft, _ = sft_stage(ctx)
    warmup = sft_checkpoint(ctx, sft, "warmup")
    recipe = replace(cfg.sft, epochs=oc.epochs, train_epochs=None, eval_every_steps=oc.eval_every_steps)
    upstream = {"samples": samples_stage_of(ctx, warmup, "train", oc.sampling).hash, "base": ctx.base_model_key}

    def compute(folder: Path) -> dict:  # the samples are drawn (or read) only when this stage is computed
        samples = sample_stage(ctx, warmup, "train", oc.sampling)
        records = offline_records(ctx.splits["train"], samples, oc, ctx.cot)
        n_truth = sum(r["ground_truth"] for r in records)
        n_sampled = len(records) - n_truth
        log.info("offline_st: %d training examples (%d self-generated + %d ground truth)", len(records),
                 n_sampled, n_truth)
        out = train_supervised(ctx, recipe, records, ctx.base_model_path, folder, desc="offline_st")
        return out | {"examples": len(records), "self_generated": n_sampled,
                      "samples_stage": str(samples.stage.dir),
                      "sample_accuracy": samples.stage.meta()["sample_accuracy"]}

    return training_stage(ctx, "offline_st", READS, upstream, compute)


def run(ctx: RunContext) -> dict:
    """``method=offline_st``: the best epoch's greedy accuracy of the base model trained on self-samples."""
    stage, meta = offline_st_stage(ctx)
    return {"train": meta, "checkpoint": str(stage.dir / "best"), "examples": meta["examples"],
            "self_generated": meta["self_generated"], "samples_stage": meta["samples_stage"]}
