"""SFT: supervised fine-tuning on (question, CoT) pairs, as upstream ``train_sft_model.py``.

AdamW, linear schedule with 10% warm-up, grad clipping, per-device batch x grad accumulation, greedy test
accuracy every epoch with the best epoch kept, and the warm-up checkpoint (epoch ``warmup_epoch`` of the
same run) saved for ReFT and self-training. The SFT run is a cached stage: every cell of a grid that needs
it (SFT itself, the warm-up of ReFT / self-training, samplers) reuses the one run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from reft_exp.batching import encode_records, sft_loader
from reft_exp.checkpoint import (
    load_train_state,
    remove_train_state,
    save_model,
    save_train_state,
    verify_model,
)
from reft_exp.config import SFTConfig
from reft_exp.context import RunContext
from reft_exp.distributed import configure_deepspeed
from reft_exp.evaluate import greedy_eval
from reft_exp.models import load_causal_lm, load_tokenizer
from reft_exp.stages import Stage, run_stage
from reft_exp.utils import atomic_write_json

log = logging.getLogger(__name__)
STATE_DIR = "last_state"  # resumable training state, rewritten at the end of every epoch (+ ``.prev``)


def train_supervised(ctx: RunContext, sft: SFTConfig, train_records: Sequence[dict], init_path: str,
                     out_dir: Path, warmup_epoch: int | None, desc: str = "sft") -> dict:
    """Train on ``train_records`` from ``init_path``; writes ``best/``, ``warmup/`` and ``metrics.json``."""
    acc, cfg = ctx.accelerator, ctx.cfg
    tokenizer = load_tokenizer(init_path, cfg.model)
    model = load_causal_lm(init_path, cfg.model)
    examples = encode_records(tokenizer, train_records, ctx.cot, sft.max_length, cfg.model.add_special_tokens)
    generator = torch.Generator().manual_seed(cfg.root.seed)
    loader = sft_loader(examples, sft.batch_size, generator, tokenizer.pad_token_id, sft.length_bucketing,
                        sft.length_bucketing_pool)
    optimizer = torch.optim.AdamW(model.parameters(), lr=sft.lr, weight_decay=sft.weight_decay,
                                  betas=tuple(sft.adam_betas), eps=sft.adam_eps)
    configure_deepspeed(acc, sft.batch_size, sft.grad_accum, sft.grad_clip)  # DeepSpeed only
    model, optimizer, loader = acc.prepare(model, optimizer, loader)
    # accelerate steps a prepared scheduler once per process per optimizer step: count in those units.
    steps_per_epoch = math.ceil(len(loader) / sft.grad_accum)
    total_steps = sft.epochs * steps_per_epoch * acc.num_processes
    scheduler = acc.prepare(get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=int(sft.warmup_ratio * total_steps), num_training_steps=total_steps))
    acc.gradient_accumulation_steps = sft.grad_accum

    # Resume after the last saved epoch (model, optimizer, scheduler, RNGs incl. the data order, history).
    state_dir, rngs = out_dir / STATE_DIR, {"data_order": generator}
    progress = load_train_state(acc, state_dir, model, optimizer, scheduler, rngs)
    if progress is not None:
        log.info("%s: resuming after epoch %d (step %d) from %s", desc, progress["epoch"], progress["step"],
                 state_dir)
    else:
        progress = {"epoch": 0, "step": 0, "epochs": [], "best": {"accuracy": -1.0, "epoch": None}}
    history, best, step = progress["epochs"], progress["best"], progress["step"]
    for epoch in range(progress["epoch"] + 1, sft.last_epoch + 1):
        model.train()
        losses, tokens, t_start = [], 0, time.perf_counter()  # tokens: non-pad tokens of this process
        bar = tqdm(loader, desc=f"{desc} epoch {epoch}/{sft.epochs}", disable=not (cfg.root.progress and
                                                                                  acc.is_main_process))
        with ctx.timer(f"{desc}_train"):
            for batch in bar:
                with acc.accumulate(model):
                    loss = model(**batch).loss
                    acc.backward(loss)
                    if acc.sync_gradients:
                        acc.clip_grad_norm_(model.parameters(), sft.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                losses.append(loss.detach().float().item())
                tokens += int(batch["attention_mask"].sum())
                if acc.sync_gradients:
                    step += 1
                    if step % sft.log_every_steps == 0:
                        ctx.tracker.log({f"{desc}/loss": losses[-1], f"{desc}/lr": scheduler.get_last_lr()[0]}, step)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        seconds = time.perf_counter() - t_start
        tokens = int(acc.reduce(torch.tensor(tokens, device=acc.device), reduction="sum"))
        row = {"epoch": epoch, "step": step, "train_loss": sum(losses) / max(len(losses), 1),
               "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens / max(seconds, 1e-9)}
        if epoch % sft.eval_every_epochs == 0 or epoch == sft.last_epoch:
            with ctx.timer(f"{desc}_eval"):
                res = greedy_eval(acc, model, tokenizer, ctx.splits["test"], ctx.spec,
                                  cfg.inference.max_new_tokens, sft.eval_batch_size,
                                  cfg.model.add_special_tokens, cfg.root.progress, ctx.executor_if_needed)
            row.update(test_accuracy=res.accuracy, test_extracted=res.n_extracted / max(res.n, 1))
            if res.accuracy > best["accuracy"]:
                best = {"accuracy": res.accuracy, "epoch": epoch}
                if sft.save_best:
                    save_model(acc, model, tokenizer, out_dir / "best")
        if warmup_epoch is not None and epoch == warmup_epoch:
            save_model(acc, model, tokenizer, out_dir / "warmup")
        history.append(row)
        ctx.tracker.log({f"{desc}/{k}": v for k, v in row.items() if k != "epoch"} | {"epoch": epoch}, step)
        log.info("%s epoch %d: loss %.4f test acc %s", desc, epoch, row["train_loss"],
                 f"{row['test_accuracy']:.4f}" if "test_accuracy" in row else "-")
        if acc.is_main_process:
            atomic_write_json(out_dir / "metrics.json", {"epochs": history, "best": best})
        save_train_state(acc, state_dir, model, optimizer,
                         {"epoch": epoch, "step": step, "epochs": history, "best": best}, scheduler, rngs)
    acc.free_memory()  # drop the accelerator's references to this run's model/optimizer/loader
    acc.gradient_accumulation_steps = 1
    return {"epochs": history, "best_accuracy": best["accuracy"], "best_epoch": best["epoch"],
            "final_accuracy": next((r["test_accuracy"] for r in reversed(history) if "test_accuracy" in r), None)}


def sft_stage(ctx: RunContext, sft: SFTConfig | None = None) -> tuple[Stage, dict]:
    """The SFT run for this (model, dataset, cot, seed): computed once, reused by every cell needing it."""
    cfg = ctx.cfg
    sft = sft if sft is not None else cfg.sft
    warmup_epoch = cfg.dataset.warmup_epoch[ctx.cot]
    key = {"model": cfg.model, "dataset": cfg.dataset, "cot": ctx.cot, "sft": sft, "seed": cfg.root.seed,
           "warmup_epoch": warmup_epoch, "max_new_tokens": cfg.inference.max_new_tokens,
           "mixed_precision": cfg.accelerate.mixed_precision, "base": ctx.base_model_path}
    stage = Stage(ctx.cache_dir, "sft", f"{cfg.model.name}_{cfg.dataset.name}_{ctx.cot}_s{cfg.root.seed}", key)
    init_path = ctx.base_model_path

    def compute(folder: Path) -> dict:
        return train_supervised(ctx, sft, ctx.splits["train"], init_path, folder, warmup_epoch, desc="sft")

    def verify(folder: Path) -> None:  # the checkpoints later stages load: present and intact
        saves_warmup = warmup_epoch is not None and 1 <= warmup_epoch <= sft.last_epoch
        for name in ["best"] * sft.save_best + ["warmup"] * saves_warmup:
            verify_model(folder / name)

    reused = run_stage(stage, ctx.accelerator, compute, verify)
    if not reused and ctx.accelerator.is_main_process:
        remove_train_state(stage.dir / STATE_DIR)  # the stage is complete: its resumable state is dead weight
    ctx.note_stage(stage, reused)
    return stage, stage.meta()


def run(ctx: RunContext) -> dict:
    """``method=sft``: the SFT stage's per-epoch metrics; the best epoch's greedy accuracy is reported."""
    stage, meta = sft_stage(ctx)
    return {"train": meta, "checkpoint": str(stage.dir / "best"), "warmup_checkpoint": str(stage.dir / "warmup")}
