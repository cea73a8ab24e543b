"""Online self-training (the official baseline, train_rl_sl.py:306-379): ReFT's RL loop and init without
critic, KL or reference.

Each step, for a batch of training questions (train_rl_sl.py:306-379):
  1. sample one response per question from the current policy (top_k 0, top_p 1, temperature 1), the prompt
     truncated to ``max_prompt_length`` tokens;
  2. score it and keep the responses whose reward is exactly the correct reward (1);
  3. ``ppo_epochs`` times (2, the OnSL template): loss = ``sample_loss_weight`` * CE(kept responses) +
     ``gt_loss_weight`` * CE(ground-truth CoTs of the same questions, prompt + CoT + EOS cut to
     ``gt_max_length`` tokens), one optimizer step, grad clip, constant lr. The model is in train mode
     (dropout as the model has it, ``disable_dropout: false``).
Greedy test accuracy every epoch with the P-CoT header in the prompt (epoch 0 = the warm-up, recorded as
``warmup_accuracy`` but never the best, train_rl_sl.py:433); resumable like ReFT (the full training state
is saved at the end of every epoch).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from reft_exp.batching import PadCollator, encode_records
from reft_exp.config import OnlineSTConfig
from reft_exp.context import RunContext
from reft_exp.distributed import configure_deepspeed
from reft_exp.methods.sft import sft_checkpoint, sft_stage
from reft_exp.models import load_causal_lm, load_tokenizer, trainable_dtype
from reft_exp.rl.loop import RLTask, rl_schedule
from reft_exp.rl.policy import disable_dropout, response_logits
from reft_exp.rl.ppo_core import logprobs_from_logits
from reft_exp.rl.rollout import sample_rollout, score_rollout
from reft_exp.runner import train, training_stage
from reft_exp.stages import Stage

log = logging.getLogger(__name__)
# What the online self-training stage reads (its key); its upstream: the SFT checkpoint it starts from.
READS = ("model", "dataset", "cot", "method", "reward", "executor", "accelerate.mixed_precision", "root.seed")


class OnlineSTTask(RLTask):
    """One model (no critic, no reference), AdamW; a step is :func:`online_step`."""

    def __init__(self, ctx: RunContext, oc: OnlineSTConfig, init_path: str):
        super().__init__(ctx, oc, "online_st", init_path)
        acc, cfg = ctx.accelerator, ctx.cfg
        self.tokenizer = load_tokenizer(init_path, cfg.model)
        lm = load_causal_lm(init_path, cfg.model, trainable_dtype(cfg.model, cfg.accelerate))
        if oc.disable_dropout:
            disable_dropout(lm)
        optimizer = torch.optim.AdamW(lm.parameters(), lr=oc.lr, weight_decay=oc.weight_decay,
                                      betas=tuple(oc.adam_betas), eps=oc.adam_eps)
        configure_deepspeed(acc, oc.batch_size, 1, oc.grad_clip)  # DeepSpeed only: its batch/accum/clip values
        self.model, self.optimizer = acc.prepare(lm, optimizer)
        acc.gradient_accumulation_steps = 1
        self.collate = PadCollator(self.tokenizer.pad_token_id)

    def lm(self):
        return self.ctx.accelerator.unwrap_model(self.model)

    def step(self, records: list[dict]) -> tuple[dict[str, float], bool]:
        return online_step(self.ctx, self.rc, self.model, self.optimizer, self.tokenizer, self.collate,
                           records, self.keep_rollouts), True


def train_online_st(ctx: RunContext, oc: OnlineSTConfig, init_path: str, out_dir: Path) -> dict:
    task = OnlineSTTask(ctx, oc, init_path)
    out = train(ctx, out_dir, rl_schedule("online_st", oc), task)
    return out | {"num_questions": len(task.questions), "init_checkpoint": init_path}


def online_step(ctx: RunContext, oc: OnlineSTConfig, lm, optimizer, tokenizer, collate,
                records: list[dict], on_rollout=None) -> dict:
    """Sample, keep the correct responses, ``ppo_epochs`` updates on ``w_s CE(kept) + w_gt CE(ground truth)``."""
    acc, cfg = ctx.accelerator, ctx.cfg
    t0 = time.perf_counter()
    ro = sample_rollout(acc.unwrap_model(lm), tokenizer, records, ctx.cot, oc.max_length, oc.temperature,
                        oc.top_k, oc.top_p, cfg.model.add_special_tokens, max_prompt_length=oc.max_prompt_length)
    t1 = time.perf_counter()
    score_rollout(ro, ctx.spec, ctx.executor_if_needed)
    t2 = time.perf_counter()
    if on_rollout is not None:
        on_rollout(ro)
    keep = (ro.scores == ctx.spec.correct_reward).float().to(ro.response_mask.device)
    # the ground-truth input: prompt + CoT + EOS cut to gt_max_length tokens (train_rl_sl.py:134)
    gt = collate(encode_records(tokenizer, records, ctx.cot, oc.gt_max_length, cfg.model.add_special_tokens,
                                length_key="method.gt_max_length"))
    gt = {k: v.to(acc.device) for k, v in gt.items()}
    loss, sample_ce, gt_ce = online_update(acc, oc, lm, optimizer, ro, keep, gt)
    t3 = time.perf_counter()
    return {"score": ro.scores.mean().item(), "correct": keep.mean().item(), "loss": loss.item(),
            "sample_ce": sample_ce.item(), "gt_ce": gt_ce.item(),
            "response_length": ro.response_mask.sum(-1).mean().item(),
            "time_generate": t1 - t0, "time_score": t2 - t1, "time_update": t3 - t2}


def online_st_stage(ctx: RunContext) -> tuple[Stage, dict]:
    oc = ctx.cfg.method
    sft, _ = sft_stage(ctx)
    init = sft_checkpoint(ctx, sft, oc.init)
    return training_stage(ctx, "online_st", READS, {"init": f"{sft.hash}/{init.name}"},
                          lambda folder: train_online_st(ctx, oc, str(init), folder))


def run(ctx: RunContext) -> dict:
    """``method=online_st``: per-epoch metrics (epoch 0 = warm-up); the best epoch's greedy accuracy."""
    stage, meta = online_st_stage(ctx)
    return {"train": meta, "checkpoint": str(stage.dir / "best"), "init_checkpoint": meta["init_checkpoint"],
            "steps_file": meta["steps_file"]}


def online_update(acc, oc: OnlineSTConfig, lm, optimizer, ro, keep: torch.Tensor, gt: dict) -> tuple:
    """``oc.ppo_epochs`` optimizer steps on one scored rollout batch (train_rl_sl.py:329-379: one minibatch of
    the whole batch per pass): ``w_s`` * CE of the kept responses (token mean over their response tokens, 0
    when nothing is kept) + ``w_gt`` * CE of the ground truth. Returns the last pass's (loss, sample CE, gt CE).
    The forward always runs on the whole batch so that every process touches the same parameters."""
    lm.train()
    p = ro.prompt_width
    token_mask = ro.response_mask * keep[:, None]
    for _ in range(oc.ppo_epochs):
        logp = logprobs_from_logits(response_logits(lm, ro).float(), ro.input_ids[:, p:])
        sample_ce = -(logp * token_mask).sum() / token_mask.sum().clamp(min=1.0)
        gt_ce = lm(**gt).loss
        loss = oc.sample_loss_weight * sample_ce + oc.gt_loss_weight * gt_ce
        acc.backward(loss)
        acc.clip_grad_norm_(lm.parameters(), oc.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
    return loss, sample_ce, gt_ce
