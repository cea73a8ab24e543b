"""Majority voting over sampled answers and the offline self-training selection rule (upstream
``sampling.py`` / the ReFT paper's baselines). Pure functions; the samples stage (``reft_exp.sampling``)
feeds them."""

from __future__ import annotations

import random
from collections.abc import Sequence

from reft_exp.answers import AnswerSpec, is_correct, vote_candidate


def majority_vote(answers: Sequence[object | None], spec: AnswerSpec) -> object | None:
    """The most frequent valid answer; None answers (and non-letter MCQ answers) do not vote.

    Numeric answers within ``spec.tolerance`` of a group's first member count for that group. Ties go to
    the answer seen first. None when no answer is valid."""
    groups: list[list[object]] = []  # in order of first appearance: [representative, count]
    for ans in answers:
        cand = vote_candidate(ans, spec)
        if cand is None:
            continue
        for g in groups:
            if is_correct(cand, g[0], spec):  # same answer: within tolerance / same letter
                g[1] += 1  # type: ignore[operator]
                break
        else:
            groups.append([cand, 1])
    if not groups:
        return None
    best = max(g[1] for g in groups)  # type: ignore[type-var]
    return next(g[0] for g in groups if g[1] == best)


def vote_accuracy_by_k(rows: Sequence[dict], spec: AnswerSpec, ks: Sequence[int], repeats: int,
                       seed: int) -> dict[int, float]:
    """Vote accuracy with only K of each question's samples, for each K in ``ks``: the mean over ``repeats``
    random K-subsets (drawn with ``seed``); K >= the number of samples uses them all once. ``rows`` are
    samples-stage rows (``gold``, ``samples`` with ``pred``). Shows how voting scales with K from one
    stored sample set, without drawing again."""
    rng = random.Random(seed)
    curve: dict[int, float] = {}
    for k in ks:
        hits = 0.0
        for row in rows:
            preds = [s["pred"] for s in row["samples"]]
            if k >= len(preds):
                hits += is_correct(majority_vote(preds, spec), row["gold"], spec)
                continue
            hits += sum(is_correct(majority_vote(rng.sample(preds, k), spec), row["gold"], spec)
                        for _ in range(repeats)) / repeats
        curve[k] = hits / max(len(rows), 1)
    return curve


def select_offline_samples(completions: Sequence[str], correct: Sequence[bool], ground_truth: str,
                           max_unique: int = 10) -> list[str]:
    """Offline self-training data for one question: up to ``max_unique`` distinct correct samples (first
    seen first, exact-text duplicates removed, the ground truth not counted among them) plus the ground
    truth itself."""
    kept: list[str] = []
    seen = {ground_truth}
    for text, ok in zip(completions, correct):
        if ok and text not in seen:
            seen.add(text)
            kept.append(text)
            if len(kept) == max_unique:
                break
    return kept + [ground_truth]
