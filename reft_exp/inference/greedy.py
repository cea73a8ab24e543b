"""Greedy decoding. As in the paper, the cell's number is the best epoch's greedy test accuracy, already
measured by the method every epoch; nothing is generated again here."""

from __future__ import annotations

from typing import Any


def run(ctx, method_out: dict[str, Any]) -> dict[str, Any]:
    train = method_out["train"]
    return {"name": "greedy", "accuracy": train["best_accuracy"], "epoch": train["best_epoch"]}
