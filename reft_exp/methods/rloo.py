"""RLOO (REINFORCE Leave-One-Out, Ahmadian et al. 2024) in ReFT's grid: critic-free.

The GRPO loop of :mod:`reft_exp.methods.grpo` (same init, reward, G samples per question, clipped-ratio loss,
KL and aggregation switches) with RLOO's advantage: each response's reward minus the mean reward of the
other ``G - 1`` responses to its question (:func:`reft_exp.rl.critic_free.rloo_advantages`). By default the
KL is in the sequence reward (``score - beta * sum_t k1``, as the paper and TRL's ``RLOOTrainer``).
"""

from __future__ import annotations

import torch

from reft_exp.config import RLOOConfig
from reft_exp.context import RunContext
from reft_exp.methods.grpo import GroupTask, group_stage
from reft_exp.rl.critic_free import rloo_advantages
from reft_exp.stages import Stage

__all__ = ["RLOOTask", "rloo_stage", "run"]


class RLOOTask(GroupTask):
    def __init__(self, ctx: RunContext, rc: RLOOConfig, init_path: str):
        super().__init__(ctx, rc, init_path, "rloo")

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        return rloo_advantages(rewards, self.rc.num_generations)


def rloo_stage(ctx: RunContext) -> tuple[Stage, dict]:
    return group_stage(ctx, "rloo", RLOOTask)


def run(ctx: RunContext) -> dict:
    """``method=rloo``: per-epoch metrics (epoch 0 = warm-up); the best epoch's (1..) greedy accuracy."""
    stage, meta = rloo_stage(ctx)
    return {"train": meta, "checkpoint": str(stage.dir / "best"), "init_checkpoint": meta["init_checkpoint"],
            "steps_file": meta["steps_file"]}
