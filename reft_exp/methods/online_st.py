"""Online self-training (upstream baseline): ReFT's RL loop and init without critic, KL or reference.

Each step, for a batch of training questions:
  1. sample one response per question from the current policy (top_k 0, top_p 1, temperature 1);
  2. score it and keep the responses whose reward is exactly the correct reward (1);
  3. loss = ``sample_loss_weight`` * CE(kept responses) + ``gt_loss_weight`` * CE(ground-truth CoTs of the
     same questions), one optimizer step, grad clip, constant lr.
Greedy test accuracy every epoch (epoch 0 = the warm-up), best epoch kept; resumable like ReFT (the full
training state is saved at the end of every epoch).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from reft_exp.batching import PadCollator, encode_records
from reft_exp.checkpoint import load_train_state, remove_train_state, save_model, save_train_state
from reft_exp.config import OnlineSTConfig
from reft_exp.context import RunContext
from reft_exp.evaluate import greedy_eval
from reft_exp.methods.reft import epoch_order, rl_questions
from reft_exp.methods.sft import sft_stage
from reft_exp.models import load_causal_lm, load_tokenizer
from reft_exp.rl.policy import disable_dropout
from reft_exp.rl.ppo_core import logprobs_from_logits
from reft_exp.rl.rollout import sample_rollout, score_rollout
from reft_exp.rl.steps_log import StepsLog
from reft_exp.stages import Stage, run_stage

log = logging.getLogger(__name__)
STATE_DIR = "last_state"
STEPS_FILE = "steps.jsonl"


def train_online_st(ctx: RunContext, oc: OnlineSTConfig, init_path: str, out_dir: Path) -> dict:
    acc, cfg = ctx.accelerator, ctx.cfg
    tokenizer = load_tokenizer(init_path, cfg.model)
    lm = load_causal_lm(init_path, cfg.model)
    if oc.disable_dropout:
        disable_dropout(lm)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=oc.lr, weight_decay=oc.weight_decay,
                                  betas=tuple(oc.adam_betas), eps=oc.adam_eps)
    lm, optimizer = acc.prepare(lm, optimizer)
    acc.gradient_accumulation_steps = 1
    collate = PadCollator(tokenizer.pad_token_id)

    questions = rl_questions(tokenizer, ctx.splits["train"], ctx.cot, oc.max_prompt_length, oc.max_questions)
    per_step = oc.batch_size * acc.num_processes
    steps_per_epoch = len(questions) // per_step
    if steps_per_epoch == 0:
        raise ValueError(f"online_st: {len(questions)} usable training questions, fewer than one global batch "
                         f"({per_step}); lower method.batch_size")

    def evaluate() -> float:
        with ctx.timer("online_st_eval"):
            res = greedy_eval(acc, acc.unwrap_model(lm), tokenizer, ctx.splits["test"], ctx.spec,
                              cfg.inference.max_new_tokens, oc.eval_batch_size, cfg.model.add_special_tokens,
                              cfg.root.progress, ctx.executor_if_needed)
        return res.accuracy

    # ----- resume or start
    progress = load_train_state(acc, out_dir / STATE_DIR, lm, optimizer)
    if progress is not None:
        log.info("online_st: resuming after epoch %d (step %d)", progress["epoch"], progress["step"])
    else:
        warmup_acc = evaluate()
        progress = {"epoch": 0, "step": 0, "best": {"accuracy": warmup_acc, "epoch": 0},
                    "epochs": [{"epoch": 0, "step": 0, "test_accuracy": warmup_acc}]}
        log.info("online_st: warm-up greedy test accuracy %.4f", warmup_acc)
        if oc.save_best:
            save_model(acc, lm, tokenizer, out_dir / "best")

    step = progress["step"]
    steps_path = out_dir / STEPS_FILE
    steps_log = StepsLog(steps_path, step, acc.is_main_process)  # steps after the resume point are redone
    for epoch in range(progress["epoch"] + 1, oc.epochs + 1):
        order = epoch_order(len(questions), cfg.root.seed, epoch)
        sums: dict[str, float] = {}
        bar = tqdm(range(steps_per_epoch), desc=f"online_st epoch {epoch}/{oc.epochs}",
                   disable=not (cfg.root.progress and acc.is_main_process))
        for i in bar:
            batch_ids = order[i * per_step : (i + 1) * per_step]
            local = batch_ids[acc.process_index * oc.batch_size : (acc.process_index + 1) * oc.batch_size]
            stats = online_step(ctx, oc, lm, optimizer, tokenizer, collate, [questions[j] for j in local])
            step += 1
            steps_log.append(epoch, step, stats)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % oc.log_every_steps == 0:
                ctx.tracker.log({f"online_st/{k}": v for k, v in stats.items()}, step)
            bar.set_postfix(correct=f"{stats['correct']:.2f}", loss=f"{stats['loss']:.3f}")
        row = {"epoch": epoch, "step": step} | {k: v / steps_per_epoch for k, v in sums.items()}
        if epoch % oc.eval_every_epochs == 0 or epoch == oc.epochs:
            row["test_accuracy"] = evaluate()
            if row["test_accuracy"] > progress["best"]["accuracy"]:
                progress["best"] = {"accuracy": row["test_accuracy"], "epoch": epoch}
                if oc.save_best:
                    save_model(acc, lm, tokenizer, out_dir / "best")
        progress["epochs"].append(row)
        progress["epoch"], progress["step"] = epoch, step
        log.info("online_st epoch %d: kept %.3f loss %.4f test acc %s", epoch, row["correct"], row["loss"],
                 f"{row.get('test_accuracy', float('nan')):.4f}")
        ctx.tracker.log({f"online_st/epoch_{k}": v for k, v in row.items() if k != "epoch"} | {"epoch": epoch},
                        step)
        save_train_state(acc, out_dir / STATE_DIR, lm, optimizer, progress)
    final = next((r["test_accuracy"] for r in reversed(progress["epochs"]) if "test_accuracy" in r), None)
    return {"epochs": progress["epochs"], "best_accuracy": progress["best"]["accuracy"],
            "best_epoch": progress["best"]["epoch"], "final_accuracy": final,
            "warmup_accuracy": progress["epochs"][0]["test_accuracy"], "num_questions": len(questions),
            "steps": step, "init_checkpoint": init_path, "steps_file": str(steps_path)}


def online_step(ctx: RunContext, oc: OnlineSTConfig, lm, optimizer, tokenizer, collate,
                records: list[dict]) -> dict:
    """Sample, keep the correct responses, one update on ``w_s CE(kept) + w_gt CE(ground truth)``."""
    acc, cfg = ctx.accelerator, ctx.cfg
    t0 = time.perf_counter()
    ro = sample_rollout(acc.unwrap_model(lm), tokenizer, records, ctx.cot, oc.max_length, oc.temperature,
                        oc.top_k, oc.top_p, cfg.model.add_special_tokens)
    t1 = time.perf_counter()
    score_rollout(ro, ctx.spec, ctx.executor_if_needed)
    t2 = time.perf_counter()
    keep = (ro.scores == ctx.spec.correct_reward).float().to(ro.response_mask.device)
    lm.train()
    # CE of the kept responses: token mean over their response tokens (0 when nothing is kept). The forward
    # always runs on the whole batch so that every process touches the same parameters.
    p = ro.prompt_width
    logits = lm(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=ro.position_ids).logits
    logp = logprobs_from_logits(logits[:, p - 1 : -1].float(), ro.input_ids[:, p:])
    token_mask = ro.response_mask * keep[:, None]
    sample_ce = -(logp * token_mask).sum() / token_mask.sum().clamp(min=1.0)
    gt = collate(encode_records(tokenizer, records, ctx.cot, oc.max_length, cfg.model.add_special_tokens))
    gt_ce = lm(**{k: v.to(acc.device) for k, v in gt.items()}).loss
    loss = oc.sample_loss_weight * sample_ce + oc.gt_loss_weight * gt_ce
    acc.backward(loss)
    acc.clip_grad_norm_(lm.parameters(), oc.grad_clip)
    optimizer.step()
    optimizer.zero_grad()
    t3 = time.perf_counter()
    return {"score": ro.scores.mean().item(), "correct": keep.mean().item(), "loss": loss.item(),
            "sample_ce": sample_ce.item(), "gt_ce": gt_ce.item(),
            "response_length": ro.response_mask.sum(-1).mean().item(),
            "time_generate": t1 - t0, "time_score": t2 - t1, "time_update": t3 - t2}


def online_st_stage(ctx: RunContext) -> tuple[Stage, dict]:
    cfg, oc = ctx.cfg, ctx.cfg.method
    sft, _ = sft_stage(ctx)
    init_path = str(sft.dir / oc.init)
    key = {"sft_stage": sft.hash, "online_st": oc, "seed": cfg.root.seed, "reward": cfg.reward,
           "max_new_tokens": cfg.inference.max_new_tokens, "mixed_precision": cfg.accelerate.mixed_precision}
    stage = Stage(ctx.cache_dir, "online_st", f"{cfg.model.name}_{cfg.dataset.name}_{ctx.cot}_s{cfg.root.seed}",
                  key)
    reused = run_stage(stage, ctx.accelerator, lambda folder: train_online_st(ctx, oc, init_path, folder))
    if not reused and ctx.accelerator.is_main_process:
        remove_train_state(stage.dir / STATE_DIR)  # complete: the resumable state is dead weight
    ctx.note_stage(stage, reused)
    return stage, stage.meta()


def run(ctx: RunContext) -> dict:
    """``method=online_st``: per-epoch metrics (epoch 0 = warm-up); the best epoch's greedy accuracy."""
    stage, meta = online_st_stage(ctx)
    return {"train": meta, "checkpoint": str(stage.dir / "best"), "init_checkpoint": meta["init_checkpoint"],
            "steps_file": meta["steps_file"]}
