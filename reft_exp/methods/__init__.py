"""Training methods, one file each; ``run(ctx) -> dict`` returns per-epoch metrics and checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reft_exp.methods import reft, sft

METHODS: dict[str, Callable[..., dict[str, Any]]] = {"sft": sft.run, "reft": reft.run}
