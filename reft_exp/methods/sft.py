"""SFT: supervised fine-tuning on (question, CoT) pairs, as the official ``train_sft_model.py``.

AdamW, linear schedule with 10% warm-up, grad clipping, per-device batch x grad accumulation; greedy test
accuracy (prompt + response <= ``sft.eval_max_length``, train_sft_model.py:303-305) every epoch, or every
``sft.eval_every_steps`` optimizer steps (offline self-training, as the OffSL scripts), the best kept; the epoch
checkpoints ``epoch_<n>/`` (every epoch, or ``sft.save_epochs``), among which ``sft.warmup_checkpoint`` picks the
warm-up of ReFT and self-training (``dataset.warmup_epoch``, or the earliest with enough right training samples).
The SFT run is a cached stage: every cell of a grid that needs it (SFT itself, the warm-up of ReFT /
self-training, samplers) reuses the one run, whatever warm-up epoch it picks.
The loop, resume and checkpoints are the runner's (reft_exp/runner.py); this file is the build and the step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import get_linear_schedule_with_warmup

from reft_exp.batching import encode_records, sft_loader
from reft_exp.checkpoint import save_model, verify_model
from reft_exp.config import ConfigError, SFTConfig
from reft_exp.context import RunContext
from reft_exp.distributed import configure_deepspeed
from reft_exp.evaluate import eval_outputs, greedy_eval
from reft_exp.models import load_causal_lm, load_tokenizer, trainable_dtype
from reft_exp.runner import GeneratorState, Schedule, Task, stage_of, train, training_stage
from reft_exp.stages import Stage

log = logging.getLogger(__name__)
# What the SFT stage reads (its key: reft_exp.stages.stage_key); the base model is its upstream.
READS = ("model", "dataset", "cot", "sft", "reward", "executor", "accelerate.mixed_precision", "root.seed")


class SupervisedTask(Task):
    """Cross-entropy on prompt + target with the prompt's labels ignored, the official SFT recipe."""

    def __init__(self, ctx: RunContext, sft: SFTConfig, records: Sequence[dict], init_path: str, desc: str):
        acc, cfg = ctx.accelerator, ctx.cfg
        self.ctx, self.sft = ctx, sft
        self.tokenizer = load_tokenizer(init_path, cfg.model)
        model = load_causal_lm(init_path, cfg.model, trainable_dtype(cfg.model, cfg.accelerate))
        examples = encode_records(self.tokenizer, records, ctx.cot, sft.max_length, cfg.model.add_special_tokens)
        generator = torch.Generator().manual_seed(cfg.root.seed)  # the data order, saved with every state
        loader = sft_loader(examples, sft.batch_size, generator, self.tokenizer.pad_token_id, sft.length_bucketing,
                            sft.length_bucketing_pool)
        optimizer = torch.optim.AdamW(model.parameters(), lr=sft.lr, weight_decay=sft.weight_decay,
                                      betas=tuple(sft.adam_betas), eps=sft.adam_eps)
        configure_deepspeed(acc, sft.batch_size, sft.grad_accum, sft.grad_clip)  # DeepSpeed only
        self.model, self.optimizer, self.loader = acc.prepare(model, optimizer, loader)
        # The schedule counts global optimizer steps and is stepped once per optimizer step, here, not through
        # accelerate (whose prepared scheduler steps once per process per step): its saved state then means the
        # same under any process count, so a run saved on N processes resumes on M (docs/reliability.md).
        self.steps_per_epoch = math.ceil(len(self.loader) / sft.grad_accum)
        total_steps = sft.epochs * self.steps_per_epoch
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, num_warmup_steps=int(sft.warmup_ratio * total_steps), num_training_steps=total_steps)
        self.objects = (GeneratorState(generator), self.scheduler)
        acc.gradient_accumulation_steps = sft.grad_accum
        if sft.eval_every_steps is not None and self.steps_per_epoch * sft.last_epoch < sft.eval_every_steps:
            raise ConfigError(f"{desc}: eval_every_steps={sft.eval_every_steps} but the run has only "
                              f"{self.steps_per_epoch * sft.last_epoch} optimizer steps: nothing would be evaluated")
        self.tokens = 0  # non-pad tokens this process trained on in the current epoch

    def batches(self, epoch: int):
        self.model.train()
        self.tokens = 0
        return self.loader

    def step(self, batch) -> tuple[dict[str, float], bool]:
        acc = self.ctx.accelerator
        with acc.accumulate(self.model):
            loss = self.model(**batch).loss
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(self.model.parameters(), self.sft.grad_clip)
            self.optimizer.step()
            if acc.sync_gradients and not acc.optimizer_step_was_skipped:
                self.scheduler.step()
            self.optimizer.zero_grad()
        self.tokens += int(batch["attention_mask"].sum())
        return {"loss": loss.detach().float().item(), "lr": self.scheduler.get_last_lr()[0]}, acc.sync_gradients

    def epoch_summary(self, stats: list[dict[str, float]], seconds: float) -> dict[str, float]:
        acc = self.ctx.accelerator
        tokens = int(acc.reduce(torch.tensor(self.tokens, device=acc.device), reduction="sum"))
        return {"train_loss": sum(s["loss"] for s in stats) / max(len(stats), 1),
                "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": tokens / max(seconds, 1e-9)}

    def evaluate(self) -> dict[str, float]:
        ctx, cfg = self.ctx, self.ctx.cfg
        res = greedy_eval(ctx.accelerator, self.model, self.tokenizer, ctx.splits["test"], ctx.spec,
                          cfg.inference.max_new_tokens, self.sft.eval_batch_size, cfg.model.add_special_tokens,
                          cfg.root.progress, ctx.executor_if_needed, with_header=False,
                          max_length=self.sft.eval_max_length, length_key="sft.eval_max_length")
        self.model.train()
        return {"test_accuracy": res.accuracy, "test_extracted": res.n_extracted / max(res.n, 1),
                "outputs": eval_outputs(ctx.splits["test"], res)}

    def save_model(self, folder: Path) -> None:
        save_model(self.ctx.accelerator, self.model, self.tokenizer, folder, self.ctx.cfg.model.dtype)


def saved_epochs(sft: SFTConfig) -> list[int]:
    """The epoch checkpoints an SFT run keeps (``sft.save_epochs``; null = every epoch it trains)."""
    every = range(1, sft.last_epoch + 1)
    return list(every) if sft.save_epochs is None else [e for e in sft.save_epochs if e in every]


def train_supervised(ctx: RunContext, sft: SFTConfig, records: Sequence[dict], init_path: str, out_dir: Path,
                     desc: str = "sft", save_epochs: Sequence[int] = ()) -> dict:
    """Train on ``records`` from ``init_path``; writes ``best/``, ``epoch_<n>/`` and ``metrics.json``."""
    task = SupervisedTask(ctx, sft, records, init_path, desc)
    per_epoch = sft.eval_every_steps is None  # step-based runs evaluate only every N steps (OffSL scripts)
    sched = Schedule(desc=desc, epochs=sft.last_epoch, schedule_epochs=sft.epochs,
                     eval_every_epochs=sft.eval_every_epochs if per_epoch else None,
                     eval_every_steps=sft.eval_every_steps, save_best=sft.save_best, save_epochs=tuple(save_epochs),
                     log_every_steps=sft.log_every_steps, eval_init=sft.eval_init)
    return train(ctx, out_dir, sched, task)


def sft_stage(ctx: RunContext) -> tuple[Stage, dict]:
    """The SFT run for this (model, dataset, cot, seed): computed once, reused by every cell needing it,
    whatever warm-up epoch each picks among its epoch checkpoints."""
    cfg = ctx.cfg
    epochs = saved_epochs(cfg.sft)

    def compute(folder: Path) -> dict:
        return train_supervised(ctx, cfg.sft, ctx.splits["train"], ctx.base_model_path, folder, "sft", epochs)

    def verify(folder: Path) -> None:  # the checkpoints later stages load: present and intact
        for name in ["best"] * cfg.sft.save_best + [f"epoch_{e}" for e in epochs]:
            verify_model(folder / name)

    return training_stage(ctx, "sft", READS, sft_upstream(ctx), compute, verify)


def sft_upstream(ctx: RunContext) -> dict[str, str]:
    return {"base": ctx.base_model_key}


def sft_stage_of(ctx: RunContext) -> Stage:
    """The SFT stage of this cell (its folder and key; nothing is trained)."""
    return stage_of(ctx, "sft", READS, sft_upstream(ctx))


def sft_checkpoint(ctx: RunContext, stage: Stage, which: str) -> Path:
    """A checkpoint of the SFT run: ``best``, or ``warmup`` = the epoch ``sft.warmup_checkpoint`` picks
    (``fixed``: ``dataset.warmup_epoch``; ``min_sample_accuracy``: :func:`choose_warmup_epoch` on the training
    samples of the epoch checkpoints, each a cached samples stage). The choice is kept in ``ctx.warmup`` (the
    cell's record: ``warmup``)."""
    if which == "best":
        return stage.dir / "best"
    cfg, wc = ctx.cfg, ctx.cfg.sft.warmup_checkpoint
    start, epochs = cfg.dataset.warmup_epoch[ctx.cot], saved_epochs(cfg.sft)
    if start not in epochs:
        raise ConfigError(f"dataset.warmup_epoch.{ctx.cot}={start}: the SFT run keeps only epochs "
                          f"{epochs} (sft.save_epochs, sft.train_epochs)")
    measured: dict[int, float] = {}
    if wc.rule == "fixed":
        epoch = start
    else:
        from reft_exp.sampling import sample_stage

        def accuracy(e: int) -> float:
            samples = sample_stage(ctx, stage.dir / f"epoch_{e}", "train", wc.sampling,
                                   length_key="sft.warmup_checkpoint.sampling.max_length",
                                   name=f"warmup_samples_epoch{e}")
            measured[e] = float(samples.stage.meta()["sample_accuracy"])
            return measured[e]

        epoch = choose_warmup_epoch(start, epochs, accuracy, wc.min_sample_accuracy)
        log.info("warm-up: SFT epoch %d of %s (%s >= %g from epoch %d; training samples right: %s)", epoch, epochs,
                 wc.rule, wc.min_sample_accuracy, start,
                 ", ".join(f"epoch {e} {100 * a:.1f}%" for e, a in sorted(measured.items())))
    ctx.warmup = {"epoch": epoch, "rule": wc.rule, "checkpoint": str(stage.dir / f"epoch_{epoch}")}
    if measured:
        ctx.warmup |= {"min_sample_accuracy": wc.min_sample_accuracy, "start_epoch": start,
                       "train_sample_accuracy": {str(e): a for e, a in sorted(measured.items())}}
    return stage.dir / f"epoch_{epoch}"


def choose_warmup_epoch(start: int, epochs: Sequence[int], accuracy: Callable[[int], float],
                        minimum: float) -> int:
    """The ``min_sample_accuracy`` rule: the earliest of ``epochs`` (ascending) whose ``accuracy`` reaches
    ``minimum``, searched from ``start`` outward: later epochs while below it, earlier ones while they still reach
    it; the last epoch when none reaches it. ``accuracy`` is called only for the epochs visited (each costs a
    sampling pass), so a run whose accuracy rises with its epochs gets the first epoch at the minimum."""
    i = list(epochs).index(start)
    if accuracy(epochs[i]) < minimum:
        for e in epochs[i + 1 :]:
            if accuracy(e) >= minimum:
                return e
        return epochs[-1]
    while i > 0 and accuracy(epochs[i - 1]) >= minimum:
        i -= 1
    return epochs[i]


def run(ctx: RunContext) -> dict:
    """``method=sft``: the SFT stage's per-epoch metrics; the best epoch's greedy accuracy is reported."""
    stage, meta = sft_stage(ctx)
    out = {"train": meta, "checkpoint": str(stage.dir / "best")}
    # the fixed warm-up's path (a chosen one is picked by the cells that start from it: no sampling here)
    cfg = ctx.cfg
    if cfg.sft.warmup_checkpoint.rule == "fixed" and cfg.dataset.warmup_epoch[ctx.cot] in saved_epochs(cfg.sft):
        out["warmup_checkpoint"] = str(sft_checkpoint(ctx, stage, "warmup"))
    return out
