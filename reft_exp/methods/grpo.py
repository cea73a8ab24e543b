"""GRPO (DeepSeekMath, Shao et al. 2024) and Dr. GRPO (Liu et al. 2025) in ReFT's grid: critic-free.

Same init (the SFT warm-up checkpoint: policy and frozen reference), same reward (1 / 0.1 / 0), same data,
CoT styles, loop and greedy evaluation as ReFT (:mod:`reft_exp.methods.reft`). Each step, for a batch of
training questions:
  1. sample ``num_generations`` (G) responses per question (the question's record repeated G times, adjacent
     rows), the P-CoT header in the prompt, top_k 0, top_p 1, temperature 1; score each;
  2. per-token log-probs of the samples under the rollout policy and the reference;
  3. the reward: the score, minus ``beta * sum_t k1_t`` when ``kl_mode: reward`` (ReFT's / RLOO's KL);
  4. one advantage per response from its group (:meth:`GroupTask.advantages`; GRPO: ``(r - mean) / (std +
     eps)``, or ``r - mean`` with ``scale_rewards: none``), given to all its tokens; groups whose scores are
     all equal get 0 and are counted (``zero_variance_groups``);
  5. ``ppo_epochs`` updates of the clipped-ratio loss (``+ beta * k3`` per token when ``kl_mode: loss``),
     aggregated per token, per sequence or by a constant (:func:`reft_exp.rl.critic_free.aggregate_loss`).
No value model. The math is in :mod:`reft_exp.rl.critic_free`; RLOO (:mod:`reft_exp.methods.rloo`) is this
task with another advantage. Design choices and tiny-scale numbers: docs/critic_free.md.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from reft_exp.config import CriticFreeConfig, GRPOConfig
from reft_exp.context import RunContext
from reft_exp.distributed import configure_deepspeed, prepare_frozen
from reft_exp.methods.sft import sft_checkpoint, sft_stage
from reft_exp.models import load_causal_lm, load_tokenizer, trainable_dtype
from reft_exp.rl.critic_free import (
    clipped_policy_loss,
    grpo_advantages,
    k1_kl,
    k3_kl,
    kl_penalised_rewards,
    truncated_rows,
    zero_variance_groups,
)
from reft_exp.rl.loop import RLTask, rl_schedule
from reft_exp.rl.policy import disable_dropout, response_logprobs_values
from reft_exp.rl.ppo_core import entropy_from_logits
from reft_exp.rl.rollout import sample_rollout, score_rollout
from reft_exp.runner import train, training_stage
from reft_exp.stages import Stage

__all__ = ["GRPOTask", "GroupTask", "group_stage", "group_step", "group_update", "run"]

log = logging.getLogger(__name__)
# What a critic-free stage reads (its key), as ReFT's; its upstream: the SFT checkpoint it starts from.
READS = ("model", "dataset", "cot", "method", "reward", "executor", "accelerate.mixed_precision", "root.seed")


class GroupTask(RLTask):
    """Policy, frozen reference (the warm-up: KL logged, and penalised when ``kl_coef`` > 0), AdamW, no critic;
    a step is :func:`group_step`. Subclasses define :meth:`advantages`."""

    def __init__(self, ctx: RunContext, rc: CriticFreeConfig, init_path: str, desc: str):
        super().__init__(ctx, rc, desc, init_path)
        acc, cfg = ctx.accelerator, ctx.cfg
        self.tokenizer = load_tokenizer(init_path, cfg.model)
        lm = load_causal_lm(init_path, cfg.model, trainable_dtype(cfg.model, cfg.accelerate))
        ref = load_causal_lm(init_path, cfg.model)
        for m in (lm, ref):
            if rc.disable_dropout:
                disable_dropout(m)
        optimizer = torch.optim.AdamW(lm.parameters(), lr=rc.lr, weight_decay=rc.weight_decay,
                                      betas=tuple(rc.adam_betas), eps=rc.adam_eps)
        configure_deepspeed(acc, rc.batch_size * rc.num_generations, 1, rc.grad_clip)
        self.model, self.optimizer = acc.prepare(lm, optimizer)
        acc.gradient_accumulation_steps = 1  # one optimizer step per pass over the rollout batch
        self.ref = prepare_frozen(acc, ref)

    def lm(self):
        return self.ctx.accelerator.unwrap_model(self.model)

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """``[B * G]`` rewards (groups of G adjacent rows) -> one advantage per response."""
        raise NotImplementedError

    def step(self, records: list[dict]) -> tuple[dict[str, float], bool]:
        return group_step(self.ctx, self.rc, self.model, self.ref, self.optimizer, self.tokenizer, records,
                          self.advantages), True


class GRPOTask(GroupTask):
    def __init__(self, ctx: RunContext, rc: GRPOConfig, init_path: str):
        super().__init__(ctx, rc, init_path, "grpo")

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        return grpo_advantages(rewards, self.rc.num_generations, self.rc.scale_rewards, self.rc.std_eps)


def group_step(ctx: RunContext, rc: CriticFreeConfig, model, ref, optimizer, tokenizer, records: list[dict],
               advantages_fn) -> dict:
    """One rollout of G samples per question and ``ppo_epochs`` updates on it; scalar stats for the log."""
    acc, cfg = ctx.accelerator, ctx.cfg
    G = rc.num_generations
    t0 = time.perf_counter()
    repeated = [r for r in records for _ in range(G)]  # the G samples of a question are adjacent rows
    ro = sample_rollout(acc.unwrap_model(model), tokenizer, repeated, ctx.cot, rc.max_length, rc.temperature,
                        rc.top_k, rc.top_p, cfg.model.add_special_tokens, max_prompt_length=rc.max_prompt_length)
    t1 = time.perf_counter()
    score_rollout(ro, ctx.spec, ctx.executor_if_needed)
    t2 = time.perf_counter()
    update = group_update(acc, rc, model, ref, optimizer, ro, advantages_fn, tokenizer.eos_token_id)
    t3 = time.perf_counter()
    scores = ro.scores
    zero_var = zero_variance_groups(scores, G)
    correct = (scores == ctx.spec.correct_reward).float()
    return {"score": scores.mean().item(), "correct": correct.mean().item(), **update,
            "zero_variance_groups": int(zero_var.sum()), "zero_variance_fraction": zero_var.float().mean().item(),
            "all_correct_groups": int((correct.reshape(-1, G) == 1).all(dim=1).sum()),
            "time_generate": t1 - t0, "time_score": t2 - t1, "time_update": t3 - t2}


def group_update(acc, rc: CriticFreeConfig, model, ref, optimizer, ro, advantages_fn, eos_token_id: int) -> dict:
    """The learning half of a step on a scored rollout of groups: KL to the reference, rewards, advantages, then
    ``ppo_epochs`` clipped-ratio updates. Returns the update's scalar stats."""
    mask = ro.response_mask
    scores = ro.scores.to(mask.device)
    truncated = truncated_rows(ro.response_ids, mask, eos_token_id)
    with torch.no_grad():
        logp_ref, _, _ = response_logprobs_values(ref, ro, with_values=False)
        # the behaviour log-probs: a forward of their own only when several passes reuse them (with one pass
        # the first forward of the update gives the same numbers, dropout being off)
        logp_old = response_logprobs_values(model, ro, with_values=False)[0] if rc.ppo_epochs > 1 else None
    loss_mask = mask * (~truncated).to(mask.dtype)[:, None] if rc.mask_truncated else mask
    constant = rc.loss_constant or rc.max_length
    model.train()
    for epoch in range(rc.ppo_epochs):
        logp, _, logits = response_logprobs_values(model, ro, with_values=False)
        if epoch == 0:
            with torch.no_grad():
                old = logp.detach() if logp_old is None else logp_old
                seq_k1 = k1_kl(old, logp_ref, mask).sum(-1)
                if rc.kl_mode == "reward":
                    rewards, _ = kl_penalised_rewards(scores, old, logp_ref, mask, rc.kl_coef)
                else:
                    rewards = scores
                advantages = advantages_fn(rewards)
        kl_tokens = k3_kl(logp, logp_ref, mask) if rc.kl_mode == "loss" and rc.kl_coef else None
        loss, stats = clipped_policy_loss(logp, old, advantages, loss_mask, rc.clip_eps, rc.loss_aggregation,
                                          constant, kl_tokens, rc.kl_coef)
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), rc.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
    return {
        "kl": seq_k1.mean().item(),  # sequence k1 to the reference at rollout time (ReFT's "kl")
        "kl_k3": k3_kl(old, logp_ref, mask).sum(-1).mean().item(),
        "loss": loss.item(), "pg_loss": stats["pg_loss"].item(), "kl_loss": stats["kl_loss"].item(),
        "clipfrac": float(stats["clipfrac"]),
        "entropy": entropy_from_logits(logits.detach(), mask).item(),
        "response_length": mask.sum(-1).mean().item(),
        "truncated": truncated.float().mean().item(),
        "reward": rewards.mean().item(),
        "mean_abs_advantage": advantages.abs().mean().item(),
    }


def train_group(ctx: RunContext, task: GroupTask, out_dir: Path, init_path: str) -> dict:
    out = train(ctx, out_dir, rl_schedule(task.desc, task.rc), task)
    return out | {"num_questions": len(task.questions), "init_checkpoint": init_path}


def group_stage(ctx: RunContext, kind: str, task_cls) -> tuple[Stage, dict]:
    """The cached training stage of a critic-free method (``kind``: grpo | rloo) from the SFT warm-up."""
    rc = ctx.cfg.method
    sft, _ = sft_stage(ctx)
    init = sft_checkpoint(ctx, sft, rc.init)
    return training_stage(ctx, kind, READS, {"init": f"{sft.hash}/{init.name}"},
                          lambda folder: train_group(ctx, task_cls(ctx, rc, str(init)), folder, str(init)))


def grpo_stage(ctx: RunContext) -> tuple[Stage, dict]:
    return group_stage(ctx, "grpo", GRPOTask)


def run(ctx: RunContext) -> dict:
    """``method=grpo``: per-epoch metrics (epoch 0 = warm-up); the best epoch's (1..) greedy accuracy. Per-step
    stats (score, KL, losses, zero-variance groups, length, time split) in the stage's ``steps.jsonl``."""
    stage, meta = grpo_stage(ctx)
    return {"train": meta, "checkpoint": str(stage.dir / "best"), "init_checkpoint": meta["init_checkpoint"],
            "steps_file": meta["steps_file"]}
