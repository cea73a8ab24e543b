"""Greedy decoding. As in the paper, the cell's number is the best epoch's greedy test accuracy, already
measured by the method every epoch; nothing is generated again here. For ReFT and online self-training the
best epoch is one of 1.. (the warm-up never counts, train_rl_reft.py:854); the warm-up's accuracy is kept
beside it as ``warmup_accuracy``."""

from __future__ import annotations

from typing import Any


def run(ctx, method_out: dict[str, Any]) -> dict[str, Any]:
    train = method_out["train"]
    out = {"name": "greedy", "accuracy": train["best_accuracy"], "epoch": train["best_epoch"]}
    if train.get("warmup_accuracy") is not None:
        out["warmup_accuracy"] = train["warmup_accuracy"]
    return out
