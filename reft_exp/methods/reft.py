"""ReFT: PPO on the correctness reward, from the SFT warm-up checkpoint (upstream ``train_rl_reft.py``).

Each step, for a batch of training questions:
  1. sample one response per question (top_k 0, top_p 1, temperature 1), the P-CoT header in the prompt;
  2. score it: 1 correct / 0.1 extracted but wrong / 0 nothing extracted;
  3. with the rollout policy and the frozen reference (both the warm-up at start) compute per-token
     log-probs; reward per token ``-beta * (logp_old - logp_ref)`` plus the score on the last action;
  4. GAE (gamma 1, lambda 0.95) over the critic's values, returns = advantages + values, advantages
     whitened over the global batch;
  5. ``ppo_epochs`` updates of ``pg_loss + vf_coef * vf_loss`` (clipped ratio, clipped values), grad clip.
Greedy test accuracy every epoch (epoch 0 = the warm-up itself), best epoch kept. Resumable: the full
training state (policy, value head, optimizer, RNG, epoch, step) is saved at the end of every epoch.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from reft_exp.checkpoint import load_train_state, remove_train_state, save_model, save_train_state
from reft_exp.config import ReFTConfig
from reft_exp.context import RunContext
from reft_exp.distributed import configure_deepspeed, prepare_frozen
from reft_exp.evaluate import greedy_eval
from reft_exp.methods.sft import sft_stage
from reft_exp.models import load_causal_lm, load_tokenizer
from reft_exp.prompts import build_prompt
from reft_exp.rl.policy import PolicyWithValue, disable_dropout, response_logprobs_values
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
from reft_exp.rl.steps_log import StepsLog
from reft_exp.stages import Stage, run_stage

log = logging.getLogger(__name__)
STATE_DIR = "last_state"  # resumable training state, rewritten at the end of every epoch
STEPS_FILE = "steps.jsonl"  # one line of stats per PPO step


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The question order of an epoch: a function of (seed, epoch) only, so a resumed run sees the same."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def rl_questions(tokenizer, train: list[dict], cot: str, max_prompt_length: int,
                 max_questions: int | None) -> list[dict]:
    """The RL training questions: those whose prompt fits ``max_prompt_length`` tokens (upstream filters by
    max_input_length), then the first ``max_questions`` (None = all)."""
    fits = [r for r in train
            if len(tokenizer(build_prompt(r["question"], cot, with_header=True))["input_ids"]) <= max_prompt_length]
    return fits[:max_questions]


def train_reft(ctx: RunContext, rc: ReFTConfig, init_path: str, out_dir: Path) -> dict:
    acc, cfg = ctx.accelerator, ctx.cfg
    tokenizer = load_tokenizer(init_path, cfg.model)
    lm = load_causal_lm(init_path, cfg.model)
    value_lm = None if rc.critic_shared else load_causal_lm(init_path, cfg.model)
    ref = load_causal_lm(init_path, cfg.model)
    for m in (lm, value_lm, ref):
        if m is not None and rc.disable_dropout:
            disable_dropout(m)
    ref.eval().requires_grad_(False)
    policy = PolicyWithValue(lm, value_lm, zero_head=rc.value_head_init == "zero")
    optimizer = torch.optim.AdamW(policy.parameters(), lr=rc.lr, weight_decay=rc.weight_decay,
                                  betas=tuple(rc.adam_betas), eps=rc.adam_eps)
    configure_deepspeed(acc, rc.batch_size, 1, rc.grad_clip)  # DeepSpeed only: its batch/accum/clip values
    policy, optimizer = acc.prepare(policy, optimizer)
    acc.gradient_accumulation_steps = 1  # one optimizer step per PPO epoch (backward() divides by this)
    ref = prepare_frozen(acc, ref)  # no optimizer state; a DeepSpeed inference engine under ZeRO-3

    # Questions whose prompt is too long are dropped (upstream filters by max_input_length).
    questions = rl_questions(tokenizer, ctx.splits["train"], ctx.cot, rc.max_prompt_length, rc.max_questions)
    per_step = rc.batch_size * acc.num_processes
    steps_per_epoch = len(questions) // per_step
    if steps_per_epoch == 0:
        raise ValueError(f"reft: {len(questions)} usable training questions, fewer than one global batch "
                         f"({per_step}); lower method.batch_size")

    def evaluate() -> float:
        with ctx.timer("reft_eval"):
            res = greedy_eval(acc, policy_lm(), tokenizer, ctx.splits["test"], ctx.spec,
                              cfg.inference.max_new_tokens, rc.eval_batch_size, cfg.model.add_special_tokens,
                              cfg.root.progress, ctx.executor_if_needed)
        return res.accuracy

    def policy_lm():
        return acc.unwrap_model(policy).lm

    # ----- resume or start
    progress = load_train_state(acc, out_dir / STATE_DIR, policy, optimizer)
    if progress is not None:
        log.info("reft: resuming after epoch %d (step %d) from %s", progress["epoch"], progress["step"], out_dir)
    else:
        warmup_acc = evaluate()
        progress = {"epoch": 0, "step": 0, "best": {"accuracy": warmup_acc, "epoch": 0},
                    "epochs": [{"epoch": 0, "step": 0, "test_accuracy": warmup_acc}]}
        log.info("reft: warm-up greedy test accuracy %.4f", warmup_acc)
        if rc.save_best:
            save_model(acc, policy_lm(), tokenizer, out_dir / "best")

    step = progress["step"]
    steps_path = out_dir / STEPS_FILE
    steps_log = StepsLog(steps_path, step, acc.is_main_process)  # steps after the resume point are redone
    for epoch in range(progress["epoch"] + 1, rc.epochs + 1):
        order = epoch_order(len(questions), cfg.root.seed, epoch)
        sums: dict[str, float] = {}
        bar = tqdm(range(steps_per_epoch), desc=f"reft epoch {epoch}/{rc.epochs}",
                   disable=not (cfg.root.progress and acc.is_main_process))
        for i in bar:
            batch_ids = order[i * per_step : (i + 1) * per_step]
            local = batch_ids[acc.process_index * rc.batch_size : (acc.process_index + 1) * rc.batch_size]
            records = [questions[j] for j in local]
            stats = ppo_step(ctx, rc, policy, ref, optimizer, tokenizer, records)
            step += 1
            steps_log.append(epoch, step, stats)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % rc.log_every_steps == 0:
                ctx.tracker.log({f"reft/{k}": v for k, v in stats.items()}, step)
            bar.set_postfix(score=f"{stats['score']:.2f}", kl=f"{stats['kl']:.3f}")
        row = {"epoch": epoch, "step": step} | {k: v / steps_per_epoch for k, v in sums.items()}
        if epoch % rc.eval_every_epochs == 0 or epoch == rc.epochs:
            row["test_accuracy"] = evaluate()
            if row["test_accuracy"] > progress["best"]["accuracy"]:
                progress["best"] = {"accuracy": row["test_accuracy"], "epoch": epoch}
                if rc.save_best:
                    save_model(acc, policy_lm(), tokenizer, out_dir / "best")
        progress["epochs"].append(row)
        progress["epoch"], progress["step"] = epoch, step
        log.info("reft epoch %d: score %.3f correct %.3f kl %.4f test acc %s", epoch, row["score"],
                 row["correct"], row["kl"], f"{row.get('test_accuracy', float('nan')):.4f}")
        ctx.tracker.log({f"reft/epoch_{k}": v for k, v in row.items() if k != "epoch"} | {"epoch": epoch}, step)
        save_train_state(acc, out_dir / STATE_DIR, policy, optimizer, progress)
    if acc.is_main_process and rc.save_best:
        acc.unwrap_model(policy).save_value_head(out_dir / "best")
    warmup_accuracy = progress["epochs"][0]["test_accuracy"]
    final = next((r["test_accuracy"] for r in reversed(progress["epochs"]) if "test_accuracy" in r), None)
    return {"epochs": progress["epochs"], "best_accuracy": progress["best"]["accuracy"],
            "best_epoch": progress["best"]["epoch"], "final_accuracy": final, "warmup_accuracy": warmup_accuracy,
            "num_questions": len(questions), "steps": step, "init_checkpoint": init_path,
            "steps_file": str(steps_path)}


def ppo_step(ctx: RunContext, rc: ReFTConfig, policy, ref, optimizer, tokenizer, records: list[dict]) -> dict:
    """One rollout batch and ``ppo_epochs`` PPO updates on it; returns scalar stats for logging."""
    acc, cfg = ctx.accelerator, ctx.cfg
    t0 = time.perf_counter()
    with torch.no_grad():
        ro = sample_rollout(acc.unwrap_model(policy).lm, tokenizer, records, ctx.cot, rc.max_length,
                            rc.temperature, rc.top_k, rc.top_p, cfg.model.add_special_tokens)
    t1 = time.perf_counter()
    score_rollout(ro, ctx.spec, ctx.executor_if_needed)
    t2 = time.perf_counter()
    update = ppo_update(acc, rc, policy, ref, optimizer, ro)
    t3 = time.perf_counter()
    correct = [float(s == ctx.spec.correct_reward) for s in ro.scores.tolist()]
    return {"score": ro.scores.mean().item(), "correct": sum(correct) / len(correct), **update,
            "time_generate": t1 - t0, "time_score": t2 - t1, "time_update": t3 - t2}


def ppo_update(acc, rc: ReFTConfig, policy, ref, optimizer, ro) -> dict:
    """The learning half of a PPO step on a scored rollout: per-token KL-penalised rewards, GAE, whitening,
    then ``ppo_epochs`` clipped policy + value updates. Returns the update's scalar stats."""
    mask = ro.response_mask
    scores = ro.scores.to(mask.device)
    with torch.no_grad():
        logp_old, values_old, _ = response_logprobs_values(policy, ro, with_values=True)
        logp_ref, _, _ = response_logprobs_values(ref, ro, with_values=False)
        rewards, kl = kl_penalty_rewards(logp_old, logp_ref, mask, scores, rc.kl_coef)
        advantages, returns = gae_advantages(rewards, values_old, mask, rc.gamma, rc.lam)
        if rc.whiten_advantages:
            advantages = masked_whiten(advantages, mask, accelerator=acc)
    policy.train()
    for _ in range(rc.ppo_epochs):
        logp, values, logits = response_logprobs_values(policy, ro, with_values=True)
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
    cfg, rc = ctx.cfg, ctx.cfg.method
    sft, _ = sft_stage(ctx)
    init_path = str(sft.dir / rc.init)
    key = {"sft_stage": sft.hash, "init": rc.init, "reft": rc, "seed": cfg.root.seed,
           "reward": cfg.reward, "max_new_tokens": cfg.inference.max_new_tokens,
           "mixed_precision": cfg.accelerate.mixed_precision}
    stage = Stage(ctx.cache_dir, "reft", f"{cfg.model.name}_{cfg.dataset.name}_{ctx.cot}_s{cfg.root.seed}", key)
    reused = run_stage(stage, ctx.accelerator, lambda folder: train_reft(ctx, rc, init_path, folder))
    if not reused and ctx.accelerator.is_main_process:
        remove_train_state(stage.dir / STATE_DIR)  # complete: the resumable state is dead weight
    ctx.note_stage(stage, reused)
    return stage, stage.meta()


def run(ctx: RunContext) -> dict:
    """``method=reft``: per-epoch metrics (epoch 0 = warm-up); the best epoch's greedy accuracy is reported.
    Per-step stats (score, KL, losses, clip fractions, entropy, length, time split) are in the stage's
    ``steps.jsonl`` (:func:`read_steps`); the record carries their per-epoch means."""
    stage, meta = reft_stage(ctx)
    return {"train": meta, "checkpoint": str(stage.dir / "best"), "init_checkpoint": meta["init_checkpoint"],
            "steps_file": meta["steps_file"]}


def read_steps(path: str | Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
