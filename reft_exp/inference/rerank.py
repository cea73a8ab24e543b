"""Reward-model reranking (upstream): a 2-class sequence classifier picks one of the K test samples.

1. The reranker: ``AutoModelForSequenceClassification`` (2 labels, score read on the last non-pad token)
   initialised from the generator's checkpoint (the method's best), trained on the deduplicated samples
   that the SFT WARM-UP drew on the TRAIN split (a samples stage shared with offline self-training),
   labelled by correctness; AdamW, linear schedule with warm-up, CE loss. A fraction of the training
   questions is held out to report the classifier's accuracy beside the majority-class rate (chance).
   The reranker is a cached stage keyed by (generator, training samples, reranker config).
2. At test time, among the unique valid candidates of each question's K samples (shared with
   ``majority_vote``), the one with the highest P(correct) is the answer. The record also carries the vote
   accuracy and the upper bound (any sample correct) of the same samples.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

from reft_exp.answers import vote_candidate
from reft_exp.checkpoint import save_model
from reft_exp.config import RerankerConfig
from reft_exp.context import RunContext
from reft_exp.inference.majority_vote import generator_checkpoint, samples_on_test, vote_stats
from reft_exp.methods.sft import sft_stage
from reft_exp.models import DTYPES, load_tokenizer
from reft_exp.prompts import build_prompt
from reft_exp.sampling import SampleSet, checkpoint_id, sample_stage, samples_stage_of
from reft_exp.stages import Stage, run_stage
from reft_exp.utils import atomic_write_json

log = logging.getLogger(__name__)
RERANKER_DIR = "reranker"


def load_classifier(path: str | Path, dtype: str, num_labels: int | None = None):
    """``AutoModelForSequenceClassification`` without transformers' load report (from a causal LM the new
    score head is reported "MISSING", which is expected: it is trained here)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        kwargs = {"num_labels": num_labels} if num_labels else {}
        return AutoModelForSequenceClassification.from_pretrained(str(path), dtype=DTYPES[dtype], **kwargs)
    finally:
        hf_logging.set_verbosity(before)


def reranker_examples(questions: dict[str, str], samples: SampleSet, cot: str) -> list[dict]:
    """Deduplicated (question, sample) pairs labelled 1 when the sample's answer is correct."""
    out = []
    for row in samples.rows:
        seen: set[str] = set()
        for s in row["samples"]:
            if s["text"] in seen:
                continue
            seen.add(s["text"])
            out.append({"item_id": row["item_id"], "text": build_prompt(questions[row["item_id"]], cot) + s["text"],
                        "label": int(s["correct"])})
    return out


class ClassifierCollator:
    """Tokenize, truncate to ``max_length`` and right-pad; the model reads its score on the last real token."""

    def __init__(self, tokenizer, max_length: int, add_special_tokens: bool):
        self.tok, self.max_length, self.add_special = tokenizer, max_length, add_special_tokens

    def __call__(self, batch: Sequence[dict]) -> dict[str, torch.Tensor]:
        enc = [self.tok(b["text"], add_special_tokens=self.add_special)["input_ids"][: self.max_length]
               for b in batch]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), self.tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(enc), width), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = torch.tensor(e)
            attn[i, : len(e)] = 1
        out = {"input_ids": ids, "attention_mask": attn}
        if "label" in batch[0]:
            out["labels"] = torch.tensor([b["label"] for b in batch], dtype=torch.long)
        return out


@torch.no_grad()
def p_correct(ctx: RunContext, model, collate: ClassifierCollator, texts: Sequence[str], batch_size: int,
              desc: str) -> list[float]:
    """P(correct) of each text, sharded over processes and gathered in order."""
    from accelerate.utils import gather_object

    acc = ctx.accelerator
    model.eval()
    items = [{"text": t} for t in texts]
    multi = acc.num_processes > 1
    with acc.split_between_processes(items) if multi else nullcontext(items) as shard:
        probs: list[float] = []
        bar = tqdm(range(0, len(shard), batch_size), desc=desc, leave=False,
                   disable=not (ctx.cfg.root.progress and acc.is_main_process))
        for i in bar:
            batch = {k: v.to(acc.device) for k, v in collate(shard[i : i + batch_size]).items()}
            logits = model(**batch).logits.float()
            probs += torch.softmax(logits, -1)[:, 1].tolist()
    return gather_object(probs) if multi else probs


def roc_auc(probs: Sequence[float], labels: Sequence[int]) -> float | None:
    """Probability that a random correct sample scores above a random wrong one (ties count half): 0.5 is
    chance for a ranker whatever the class balance. None when one class is absent."""
    pos = [p for p, y in zip(probs, labels) if y]
    neg = [p for p, y in zip(probs, labels) if not y]
    if not pos or not neg:
        return None
    order = sorted(range(len(probs)), key=lambda i: probs[i])
    ranks = [0.0] * len(probs)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and probs[order[j + 1]] == probs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def heldout_split(examples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``fraction`` of the QUESTIONS (all their samples), chosen by a seeded permutation."""
    ids = sorted({e["item_id"] for e in examples}, key=str)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ids), generator=g).tolist()
    held = {ids[i] for i in order[: int(round(fraction * len(ids)))]}
    return [e for e in examples if e["item_id"] not in held], [e for e in examples if e["item_id"] in held]


def train_reranker(ctx: RunContext, rr: RerankerConfig, generator: str, examples: list[dict],
                   out_dir: Path) -> dict:
    acc, cfg = ctx.accelerator, ctx.cfg
    tokenizer = load_tokenizer(generator, cfg.model)
    model = load_classifier(generator, cfg.model.dtype, num_labels=2)
    model.config.pad_token_id = cfg.model.pad_token_id
    collate = ClassifierCollator(tokenizer, rr.max_length, cfg.model.add_special_tokens)
    train, held = heldout_split(examples, rr.heldout_fraction, cfg.root.seed)
    loader = DataLoader(train, batch_size=rr.batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(cfg.root.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=rr.lr, weight_decay=rr.weight_decay)
    model, optimizer, loader = acc.prepare(model, optimizer, loader)
    total = rr.epochs * len(loader) * acc.num_processes
    scheduler = acc.prepare(get_linear_schedule_with_warmup(optimizer, int(rr.warmup_ratio * total), total))

    def heldout_metrics() -> dict:
        if not held:
            return {"heldout_accuracy": None, "heldout_auc": None}
        probs = p_correct(ctx, acc.unwrap_model(model), collate, [e["text"] for e in held], rr.eval_batch_size,
                          "reranker held-out")
        labels = [e["label"] for e in held]
        return {"heldout_accuracy": sum((p >= 0.5) == bool(y) for p, y in zip(probs, labels)) / len(held),
                "heldout_auc": roc_auc(probs, labels)}

    positive = sum(e["label"] for e in held) / max(len(held), 1)
    history = [{"epoch": 0} | heldout_metrics()]
    for epoch in range(1, rr.epochs + 1):
        model.train()
        losses = []
        bar = tqdm(loader, desc=f"reranker epoch {epoch}/{rr.epochs}",
                   disable=not (cfg.root.progress and acc.is_main_process))
        for batch in bar:
            loss = model(**batch).loss
            acc.backward(loss)
            acc.clip_grad_norm_(model.parameters(), rr.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        row = {"epoch": epoch, "train_loss": sum(losses) / max(len(losses), 1)} | heldout_metrics()
        history.append(row)
        log.info("reranker epoch %d: loss %.4f held-out accuracy %s (majority class %.4f), AUC %s", epoch,
                 row["train_loss"], row["heldout_accuracy"], max(positive, 1 - positive), row["heldout_auc"])
    save_model(acc, model, tokenizer, out_dir / RERANKER_DIR)
    acc.free_memory()
    return {"epochs": history, "train_examples": len(train), "heldout_examples": len(held),
            "heldout_accuracy": history[-1]["heldout_accuracy"], "heldout_auc": history[-1]["heldout_auc"],
            "heldout_chance": max(positive, 1 - positive), "train_positive_rate":
                sum(e["label"] for e in train) / max(len(train), 1)}


def reranker_stage(ctx: RunContext, generator: str) -> tuple[Stage, dict]:
    cfg, rr = ctx.cfg, ctx.cfg.inference.reranker
    sft, _ = sft_stage(ctx)
    warmup = sft.dir / "warmup"
    key = {"generator": checkpoint_id(generator),
           "train_samples": samples_stage_of(ctx, warmup, "train", rr.train_sampling).hash, "reranker": rr,
           "seed": cfg.root.seed, "mixed_precision": cfg.accelerate.mixed_precision}
    stage = Stage(ctx.cache_dir, "reranker", f"{cfg.model.name}_{cfg.dataset.name}_{ctx.cot}_s{cfg.root.seed}",
                  key)
    questions = {r["item_id"]: r["question"] for r in ctx.splits["train"]}

    def compute(folder: Path) -> dict:  # the training samples are drawn (or read) only when training
        train_samples = sample_stage(ctx, warmup, "train", rr.train_sampling)
        examples = reranker_examples(questions, train_samples, ctx.cot)
        with ctx.timer("reranker_train"):
            return train_reranker(ctx, rr, generator, examples, folder)

    reused = run_stage(stage, ctx.accelerator, compute)
    ctx.note_stage(stage, reused)
    return stage, stage.meta()


def rerank_scores(ctx: RunContext, stage: Stage, samples: SampleSet) -> list[list[float | None]]:
    """P(correct) of every test sample (None for invalid or duplicate ones), cached beside the reranker."""
    path = stage.dir / f"test_scores_{samples.stage.hash}.json"
    if path.exists():
        return json.loads(path.read_text())
    cfg, rr = ctx.cfg, ctx.cfg.inference.reranker
    questions = {r["item_id"]: r["question"] for r in ctx.splits["test"]}
    slots, texts = [], []  # (row, sample) of every unique valid candidate
    for i, row in enumerate(samples.rows):
        seen: set[str] = set()
        for j, s in enumerate(row["samples"]):
            if vote_candidate(s["pred"], ctx.spec) is None or s["text"] in seen:
                continue
            seen.add(s["text"])
            slots.append((i, j))
            texts.append(build_prompt(questions[row["item_id"]], ctx.cot) + s["text"])
    folder = stage.dir / RERANKER_DIR
    tokenizer = load_tokenizer(folder, cfg.model)
    model = load_classifier(folder, cfg.model.dtype)
    model.config.pad_token_id = cfg.model.pad_token_id
    model.to(ctx.accelerator.device)
    with ctx.timer("reranker_score"):
        probs = p_correct(ctx, model, ClassifierCollator(tokenizer, rr.max_length, cfg.model.add_special_tokens),
                          texts, rr.eval_batch_size, "rerank test")
    scores: list[list[float | None]] = [[None] * len(r["samples"]) for r in samples.rows]
    for (i, j), p in zip(slots, probs):
        scores[i][j] = p
    if ctx.accelerator.is_main_process:
        atomic_write_json(path, scores)
    return scores


def rerank_accuracy(samples: SampleSet, scores: list[list[float | None]]) -> float:
    """Per question, the candidate with the highest P(correct) (first on ties); no candidate = wrong."""
    ok = 0
    for row, sc in zip(samples.rows, scores):
        best = max((p, -j) for j, p in enumerate(sc) if p is not None) if any(p is not None for p in sc) else None
        ok += best is not None and row["samples"][-best[1]]["correct"]
    return ok / max(len(samples.rows), 1)


def run(ctx: RunContext, method_out: dict[str, Any]) -> dict[str, Any]:
    generator = generator_checkpoint(ctx, method_out)
    samples = samples_on_test(ctx, method_out)
    stage, meta = reranker_stage(ctx, generator)
    accuracy = rerank_accuracy(samples, rerank_scores(ctx, stage, samples))
    stats = vote_stats(ctx, samples)
    log.info("rerank: accuracy %.4f (vote %.4f, upper bound %.4f, greedy %.4f)", accuracy,
             stats["vote_accuracy"], stats["upper_bound"], method_out["train"]["best_accuracy"])
    return {"name": "rerank", "accuracy": accuracy, **stats,
            "num_samples": ctx.cfg.inference.sampling.num_samples,
            "greedy_accuracy": method_out["train"]["best_accuracy"], "checkpoint": generator,
            "samples_stage": str(samples.stage.dir), "reranker_stage": str(stage.dir),
            "reranker": {k: meta.get(k) for k in ("heldout_accuracy", "heldout_auc", "heldout_chance", "train_examples",
                                               "heldout_examples", "train_positive_rate")},
            "reranker_epochs": meta["epochs"]}
