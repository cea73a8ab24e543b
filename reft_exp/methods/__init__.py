"""Training methods, one file each; ``run(ctx) -> dict`` returns per-epoch metrics and checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reft_exp.methods import grpo, offline_st, online_st, reft, rloo, sft

METHODS: dict[str, Callable[..., dict[str, Any]]] = {
    "sft": sft.run, "offline_st": offline_st.run, "online_st": online_st.run, "reft": reft.run,
    "grpo": grpo.run, "rloo": rloo.run,
}
