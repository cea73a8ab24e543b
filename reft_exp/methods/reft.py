"""ReFT: PPO on the correctness reward, from the SFT warm-up checkpoint (the official code,
train_rl_reft.py:274-392 rollout, 403-478 update).

Each step, for a batch of training questions:
  1. sample one response per question (top_k 0, top_p 1, temperature 1), the P-CoT header in the prompt;
  2. score it: 1 correct / 0.1 extracted but wrong / 0 nothing extracted;
  3. with the rollout policy and the frozen reference (both the warm-up at start) compute per-token
     log-probs; reward per token ``-beta * (logp_old - logp_ref)`` plus the score on the last action;
  4. GAE (gamma 1, lambda 0.95) over the critic's values, returns = advantages + values, advantages
     whitened over the global batch;
  5. ``ppo_epochs`` updates of ``pg_loss + vf_coef * vf_loss`` (clipped ratio, clipped values), grad clip.
Greedy test accuracy every epoch, prompted with the P-CoT header, prompt + response <= ``eval_max_length``
(train_rl_reft.py:152-153, 683-686). Epoch 0 is the warm-up itself: recorded as ``warmup_accuracy`` but never
the best epoch (upstream's best starts at -1 and only epochs 1.. count, train_rl_reft.py:854). Resumable: the
full training state (policy, value head, optimizer, RNG, epoch, step) is saved at the end of every epoch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from reft_exp.config import ReFTConfig
from reft_exp.context import RunContext
from reft_exp.distributed import configure_deepspeed, prepare_frozen
from reft_exp.methods.sft import sft_checkpoint, sft_stage
from reft_exp.models import load_causal_lm, load_tokenizer, trainable_dtype
from reft_exp.rl.loop import RLTask, rl_schedule
from reft_exp.rl.policy import PolicyWithValue, disable_dropout, has_dropout, response_logprobs_values
from reft_exp.rl.ppo_core import (
    entropy_from_logits,
    gae_advantages,
    kl_penalty_rewards,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)
from reft_exp.rl.rollout import sample_rollout, score_rollout
from reft_exp.runner import read_steps, train, training_stage
from reft_exp.stages import Stage

__all__ = ["ReFTTask", "ppo_step", "ppo_update", "read_steps", "reft_stage", "run", "train_reft"]

log = logging.getLogger(__name__)
# What the ReFT stage reads (its key); its upstream: the SFT checkpoint it starts from.
READS = ("model", "dataset", "cot", "method", "reward", "executor", "accelerate.mixed_precision", "root.seed")


class ReFTTask(RLTask):
    """Policy + value head (shared backbone, or a separate critic), a frozen reference, AdamW; a step is
    :func:`ppo_step`."""

    def __init__(self, ctx: RunContext, rc: ReFTConfig, init_path: str):
        super().__init__(ctx, rc, "reft", init_path)
        acc, cfg = ctx.accelerator, ctx.cfg
        self.tokenizer = load_tokenizer(init_path, cfg.model)
        trained = trainable_dtype(cfg.model, cfg.accelerate)  # the reference stays in the configured dtype
        lm = load_causal_lm(init_path, cfg.model, trained)
        value_lm = None if rc.critic_shared else load_causal_lm(init_path, cfg.model, trained)
        ref = load_causal_lm(init_path, cfg.model)
        for m in (lm, value_lm, ref):
            if m is not None and rc.disable_dropout:
                disable_dropout(m)
        ref.eval().requires_grad_(False)
        policy = PolicyWithValue(lm, value_lm, zero_head=rc.value_head_init == "zero")
        optimizer = torch.optim.AdamW(policy.parameters(), lr=rc.lr, weight_decay=rc.weight_decay,
                                      betas=tuple(rc.adam_betas), eps=rc.adam_eps)
        configure_deepspeed(acc, rc.batch_size, 1, rc.grad_clip)  # DeepSpeed only: its batch/accum/clip values
        self.policy, self.optimizer = acc.prepare(policy, optimizer)
        acc.gradient_accumulation_steps = 1  # one optimizer step per PPO epoch (backward() divides by this)
        self.ref = prepare_frozen(acc, ref)  # no optimizer state; a DeepSpeed inference engine under ZeRO-3
        # the first PPO epoch's forward serves as the rollout's old log-probs / values pass unless dropout is on
        self.reuse_first_forward = rc.ppo_epochs > 0 and (rc.disable_dropout or not has_dropout(policy))

    def lm(self):
        return self.ctx.accelerator.unwrap_model(self.policy).lm

    def step(self, records: list[dict]) -> tuple[dict[str, float], bool]:
        return ppo_step(self.ctx, self.rc, self.policy, self.ref, self.optimizer, self.tokenizer, records,
                        self.keep_rollouts, self.reuse_first_forward), True

    def finish(self, out_dir: Path, progress) -> None:
        if self.ctx.accelerator.is_main_process and self.rc.save_best and (out_dir / "best").is_dir():
            self.ctx.accelerator.unwrap_model(self.policy).save_value_head(out_dir / "best")


def train_reft(ctx: RunContext, rc: ReFTConfig, init_path: str, out_dir: Path) -> dict:
    task = ReFTTask(ctx, rc, init_path)
    out = train(ctx, out_dir, rl_schedule("reft", rc), task)
    return out | {"num_questions": len(task.questions), "init_checkpoint": init_path}


def ppo_step(ctx: RunContext, rc: ReFTConfig, policy, ref, optimizer, tokenizer, records: list[dict],
             on_rollout=None, reuse_first_forward: bool | None = None) -> dict:
    """One rollout batch and ``ppo_epochs`` PPO updates on it; returns scalar stats for logging.
    ``on_rollout(ro)`` sees the scored rollout (the runner task keeps a few as outputs);
    ``reuse_first_forward``: as :func:`ppo_update` (the task decides it once)."""
    acc, cfg = ctx.accelerator, ctx.cfg
    t0 = time.perf_counter()
    with torch.no_grad():
        ro = sample_rollout(acc.unwrap_model(policy).lm, tokenizer, records, ctx.cot, rc.max_length,
                            rc.temperature, rc.top_k, rc.top_p, cfg.model.add_special_tokens,
                            max_prompt_length=rc.max_prompt_length)
    t1 = time.perf_counter()
    score_rollout(ro, ctx.spec, ctx.executor_if_needed)
    t2 = time.perf_counter()
    if on_rollout is not None:
        on_rollout(ro)
    update = ppo_update(acc, rc, policy, ref, optimizer, ro, reuse_first_forward)
    t3 = time.perf_counter()
    correct = [float(s == ctx.spec.correct_reward) for s in ro.scores.tolist()]
    return {"score": ro.scores.mean().item(), "correct": sum(correct) / len(correct), **update,
            "time_generate": t1 - t0, "time_score": t2 - t1, "time_update": t3 - t2}


def ppo_update(acc, rc: ReFTConfig, policy, ref, optimizer, ro, reuse_first_forward: bool | None = None) -> dict:
    """The learning half of a PPO step on a scored rollout: per-token KL-penalised rewards, GAE, whitening,
    then ``ppo_epochs`` clipped policy + value updates. Returns the update's scalar stats.

    The rollout's log-probs and values are the policy's before any update, in eval mode (train_rl_reft.py:
    275-320 under model.eval(), 403 model.train()); the official updates run their forward in eval mode too
    (train_rl_reft.py:455), which ReFT's default ``disable_dropout: true`` gives (with ``false`` the updates here
    run in train mode, with the model's dropout). When the policy has no dropout, eval and train mode give the
    same forward pass, so the first PPO epoch's forward (train mode, with grad) IS that pass: it is computed
    once and used for both (one forward of the policy, and of a separate critic, less per step).
    ``reuse_first_forward``: None = whenever the policy has no dropout (:func:`has_dropout`; ReFTTask passes
    True when it disabled the dropout itself)."""
    mask = ro.response_mask
    scores = ro.scores.to(mask.device)
    if reuse_first_forward is None:
        reuse_first_forward = rc.ppo_epochs > 0 and not has_dropout(policy)
    first = None
    with torch.no_grad():
        logp_ref, _, _ = response_logprobs_values(ref, ro, with_values=False)
    if reuse_first_forward:
        policy.train()
        first = response_logprobs_values(policy, ro, with_values=True)
        logp_old, values_old = first[0].detach(), first[1].detach()
    else:
        policy.eval()
        with torch.no_grad():
            logp_old, values_old, _ = response_logprobs_values(policy, ro, with_values=True)
    with torch.no_grad():
        rewards, kl = kl_penalty_rewards(logp_old, logp_ref, mask, scores, rc.kl_coef)
        advantages, returns = gae_advantages(rewards, values_old, mask, rc.gamma, rc.lam)
        if rc.whiten_advantages:
            advantages = masked_whiten(advantages, mask, accelerator=acc)
    policy.train()
    for epoch in range(rc.ppo_epochs):
        logp, values, logits = first if (epoch == 0 and first is not None) else \
            response_logprobs_values(policy, ro, with_values=True)
        first = None
        pg_loss, pg_stats = ppo_policy_loss(logp, logp_old, advantages, mask, rc.clip_eps)
        vf_loss, vf_stats = ppo_value_loss(values, values_old, returns, mask, rc.vf_clip)
        loss = pg_loss + rc.vf_coef * vf_loss
        acc.backward(loss)
        acc.clip_grad_norm_(policy.parameters(), rc.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
    return {
        "kl": (kl.sum(-1)).mean().item(),  # sequence KL to the reference (k1), mean over the batch
        "pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(),
        "clipfrac": float(pg_stats["clipfrac"]), "vf_clipfrac": float(vf_stats["vf_clipfrac"]),
        "entropy": entropy_from_logits(logits.detach(), mask).item(),
        "response_length": mask.sum(-1).mean().item(),
        "mean_advantage": masked_mean(advantages, mask).item(),
    }


def reft_stage(ctx: RunContext) -> tuple[Stage, dict]:
    rc = ctx.cfg.method
    sft, _ = sft_stage(ctx)
    init = sft_checkpoint(ctx, sft, rc.init)
    return training_stage(ctx, "reft", READS, {"init": f"{sft.hash}/{init.name}"},
                          lambda folder: train_reft(ctx, rc, str(init), folder))


def run(ctx: RunContext) -> dict:
    """``method=reft``: per-epoch metrics (epoch 0 = warm-up); the best epoch's (1..) greedy accuracy is reported.
    Per-step stats (score, KL, losses, clip fractions, entropy, length, time split) are in the stage's
    ``steps.jsonl`` (:func:`read_steps`); the record carries their per-epoch means."""
    stage, meta = reft_stage(ctx)
    return {"train": meta, "checkpoint": str(stage.dir / "best"), "init_checkpoint": meta["init_checkpoint"],
            "steps_file": meta["steps_file"]}


