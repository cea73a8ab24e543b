"""Majority voting over sampled answers and the offline self-training selection rule (upstream
``sampling.py`` / the ReFT paper's baselines). Pure functions; the sampling stage that feeds them is
issue 5's remaining work."""

from __future__ import annotations

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
