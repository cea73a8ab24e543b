"""Majority voting over sampled answers and the offline self-training selection rule (the official
``sampling.py:184-198`` / ``train_sl_model.py:328-344``, the ReFT paper's baselines). Pure functions; the
samples stage (``reft_exp.sampling``) feeds them."""

from __future__ import annotations

import random
from collections.abc import Sequence

from reft_exp.answers import AnswerSpec, is_correct, vote_candidate

GROUPINGS = ("exact", "tolerance")


def vote_groups(answers: Sequence[object | None], spec: AnswerSpec,
                grouping: str = "exact") -> tuple[list[object], list[int | None]]:
    """Group the valid answers: ``(representatives, group index of each answer)``, groups in order of first
    appearance, None for answers that do not vote (None, non-letter MCQ).

    ``grouping="exact"`` (upstream ``sampling.py:184-198``, a ``Counter`` of the values): equal values form a
    group. ``grouping="tolerance"``: a numeric answer within ``spec.tolerance`` of a group's first member
    joins that group."""
    if grouping not in GROUPINGS:
        raise ValueError(f"vote grouping must be one of {list(GROUPINGS)}, got {grouping!r}")
    reps: list[object] = []
    ids: list[int | None] = []
    exact: dict[object, int] = {}  # value -> group (hash equality, as a Counter)
    for ans in answers:
        cand = vote_candidate(ans, spec)
        if cand is None:
            ids.append(None)
            continue
        if grouping == "exact":
            gid = exact.setdefault(cand, len(reps))
        else:  # same answer: within tolerance / same letter
            gid = next((i for i, rep in enumerate(reps) if is_correct(cand, rep, spec)), None)
        if gid is None or gid == len(reps):
            gid = len(reps)
            reps.append(cand)
        ids.append(gid)
    return reps, ids


def _plurality(ids: Sequence[int | None]) -> int | None:
    """The most frequent group index, ties to the one seen first; None when nothing votes."""
    counts: dict[int, int] = {}  # insertion order = order of first appearance
    for gid in ids:
        if gid is not None:
            counts[gid] = counts.get(gid, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None  # max keeps the first of equal counts


def majority_vote(answers: Sequence[object | None], spec: AnswerSpec, grouping: str = "exact") -> object | None:
    """The most frequent valid answer; None answers (and non-letter MCQ answers) do not vote.

    ``grouping`` says which answers count as the same (:func:`vote_groups`: exact values, as the official
    ``Counter``, sampling.py:184-198, or within ``spec.tolerance``). Ties go to the answer seen first
    (``Counter.most_common`` keeps insertion order among equal counts). None when no answer is valid."""
    reps, ids = vote_groups(answers, spec, grouping)
    winner = _plurality(ids)
    return None if winner is None else reps[winner]


def vote_accuracy_by_k(rows: Sequence[dict], spec: AnswerSpec, ks: Sequence[int], repeats: int,
                       seed: int, grouping: str = "exact") -> dict[int, float]:
    """Vote accuracy with only K of each question's samples, for each K in ``ks``: the mean over ``repeats``
    random K-subsets (drawn with ``seed``); K >= the number of samples uses them all once. ``rows`` are
    samples-stage rows (``gold``, ``samples`` with ``pred``). Shows how voting scales with K from one
    stored sample set, without drawing again. Each question's answers are grouped once (over all its
    samples); a subset then only counts group indices."""
    rng = random.Random(seed)
    grouped = []
    for row in rows:
        reps, ids = vote_groups([s["pred"] for s in row["samples"]], spec, grouping)
        grouped.append((ids, [is_correct(rep, row["gold"], spec) for rep in reps]))
    curve: dict[int, float] = {}
    for k in ks:
        hits = 0.0
        for ids, right in grouped:
            if k >= len(ids):
                winner = _plurality(ids)
                hits += winner is not None and right[winner]
                continue
            wins = (_plurality(rng.sample(ids, k)) for _ in range(repeats))
            hits += sum(w is not None and right[w] for w in wins) / repeats
        curve[k] = hits / max(len(rows), 1)
    return curve


def select_offline_samples(completions: Sequence[str], correct: Sequence[bool], ground_truth: str,
                           max_unique: int = 10, mode: str = "upstream") -> list[str]:
    """Offline self-training data for one question, the ground truth last.

    ``mode="upstream"`` (train_sl_model.py:76-86, 328-344): the training files are the data file AND the
    samples file, so the ground truth comes twice: once from the data file, and once from the samples file
    after the first ``max_unique`` distinct correct samples (stripped, first seen first), unless one of those
    already equals it (then it took one of the slots). ``mode="dedup"``: up to ``max_unique`` distinct
    correct samples that differ from the ground truth, plus the ground truth once."""
    if mode == "upstream":
        truth = ground_truth.strip()
        unique = list(dict.fromkeys(t.strip() for t, ok in zip(completions, correct) if ok))[:max_unique]
        from_samples_file = unique + ([truth] if truth not in unique else [])
        return from_samples_file + [truth]  # + the data file's copy
    if mode != "dedup":
        raise ValueError(f"offline sample selection mode must be 'upstream' or 'dedup', got {mode!r}")
    kept: list[str] = []
    seen = {ground_truth}
    for text, ok in zip(completions, correct):
        if ok and text not in seen:
            seen.add(text)
            kept.append(text)
            if len(kept) == max_unique:
                break
    return kept + [ground_truth]
