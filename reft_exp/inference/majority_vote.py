"""Majority voting (the official code, sampling.py:184-198): K samples per TEST question from the method's
checkpoint (a cached samples stage, shared with ``rerank``), vote over the non-None extracted answers (MCQ:
single letters only), ties to the first seen; answers are the same when their values are equal (the official
``Counter``, sampling.py:184, 196; ``inference.vote_grouping: exact``) or, as a switch, within the reward
tolerance (``tolerance``)."""

from __future__ import annotations

from typing import Any

from reft_exp.answers import is_correct
from reft_exp.context import RunContext
from reft_exp.sampling import SampleSet, sample_stage
from reft_exp.voting import majority_vote, vote_accuracy_by_k


def generator_checkpoint(ctx: RunContext, method_out: dict[str, Any]) -> str:
    """The checkpoint that is sampled: the method's best (default) or the SFT warm-up."""
    which = ctx.cfg.inference.checkpoint
    if which == "best":
        return method_out["checkpoint"]
    if which == "warmup":
        from reft_exp.methods.sft import sft_checkpoint, sft_stage

        stage, _ = sft_stage(ctx)
        return str(sft_checkpoint(ctx, stage, "warmup"))
    raise ValueError(f"inference.checkpoint={which!r}: expected best | warmup")


def samples_on_test(ctx: RunContext, method_out: dict[str, Any]) -> SampleSet:
    return sample_stage(ctx, generator_checkpoint(ctx, method_out), "test", ctx.cfg.inference.sampling)


def vote_stats(ctx: RunContext, samples: SampleSet) -> dict[str, float]:
    """Vote accuracy, the upper bound (any sample correct) and the mean sample accuracy over questions."""
    n = max(len(samples.rows), 1)
    vote_ok = upper = mean_acc = 0.0
    for row in samples.rows:
        winner = majority_vote([s["pred"] for s in row["samples"]], ctx.spec, ctx.cfg.inference.vote_grouping)
        vote_ok += is_correct(winner, row["gold"], ctx.spec)
        upper += any(s["correct"] for s in row["samples"])
        mean_acc += sum(s["correct"] for s in row["samples"]) / max(len(row["samples"]), 1)
    return {"vote_accuracy": vote_ok / n, "upper_bound": upper / n, "sample_accuracy": mean_acc / n,
            "questions": len(samples.rows)}


def vote_curve(ctx: RunContext, samples: SampleSet) -> dict[str, float]:
    """``vote_accuracy_by_k``: the vote accuracy with K of the samples for the configured K below the
    sample count, then all of them (= the vote accuracy); keys are K as strings (JSON)."""
    inf = ctx.cfg.inference
    k_max = max((len(row["samples"]) for row in samples.rows), default=0)
    ks = sorted({k for k in inf.curve_ks if k < k_max} | {k_max}) if k_max else []
    curve = vote_accuracy_by_k(samples.rows, ctx.spec, ks, inf.curve_repeats, ctx.cfg.root.seed, inf.vote_grouping)
    return {str(k): v for k, v in curve.items()}


def run(ctx: RunContext, method_out: dict[str, Any]) -> dict[str, Any]:
    samples = samples_on_test(ctx, method_out)
    stats = vote_stats(ctx, samples)
    train = method_out["train"]
    return {"name": "majority_vote", "accuracy": stats["vote_accuracy"], **stats,
            "vote_accuracy_by_k": vote_curve(ctx, samples),
            "num_samples": ctx.cfg.inference.sampling.num_samples, "greedy_accuracy": train["best_accuracy"],
            "vote_grouping": ctx.cfg.inference.vote_grouping,
            "checkpoint": generator_checkpoint(ctx, method_out), "samples_stage": str(samples.stage.dir)}
