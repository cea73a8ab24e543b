"""Inference modes: how a trained cell's test accuracy is measured (greedy, majority vote, reranking)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reft_exp.inference import greedy, majority_vote, rerank

INFERENCE: dict[str, Callable[..., dict[str, Any]]] = {
    "greedy": greedy.run, "majority_vote": majority_vote.run, "rerank": rerank.run,
}
