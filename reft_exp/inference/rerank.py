"""Reward-model reranking (the official code, train_reward_model.py:328, 302-304): a 2-class sequence
classifier picks one of the K test samples.

1. The reranker: ``AutoModelForSequenceClassification`` (2 labels, score read on the last non-pad token)
   initialised from the generator's checkpoint (the method's best), trained on the deduplicated samples
   that the SFT WARM-UP drew on the TRAIN split (a samples stage shared with offline self-training),
   labelled by correctness; AdamW, linear schedule with warm-up, CE loss. All training questions are used,
   as the official code (train_reward_model.py:50, 133); ``heldout_fraction`` > 0 holds some out to report
   the classifier's accuracy and AUC beside the majority-class rate (chance). The reranker is a cached stage
   keyed by (generator, training samples, reranker config, and the test samples under ``best_on_test``).
2. At test time, among the unique valid candidates of each question's K samples (shared with
   ``majority_vote``; multiple choice: single letters, train_reward_model.py:294-298), the one with the
   highest P(correct) is the answer. ``selection: best_on_test`` (upstream, train_reward_model.py:188-193,
   397-402) measures that on the TEST set every ``eval_every_steps`` optimizer steps and at each epoch end and
   reports the best: optimistic, the checkpoint is chosen on the test set; the record says so
   (``selection``, ``selected_on_test``) and keeps the final model's accuracy beside it. ``selection: final``
   reports the reranker after its last epoch. The record also carries the vote accuracy and the upper bound
   (any sample correct) of the same samples.
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

from reft_exp.answers import rerank_candidate
from reft_exp.batching import right_pad
from reft_exp.checkpoint import save_model
from reft_exp.config import RerankerConfig
from reft_exp.context import RunContext
from reft_exp.distributed import configure_deepspeed
from reft_exp.inference.majority_vote import generator_checkpoint, samples_on_test, vote_stats
from reft_exp.methods.sft import sft_checkpoint, sft_stage
from reft_exp.models import DTYPES, load_tokenizer, trainable_dtype
from reft_exp.prompts import build_prompt
from reft_exp.runner import GeneratorState, Schedule, Task, remove_state, train
from reft_exp.sampling import SampleSet, sample_stage, samples_stage_of
from reft_exp.stages import Stage, checkpoint_id, run_stage, stage_key
from reft_exp.utils import atomic_write_json

log = logging.getLogger(__name__)
RERANKER_DIR = "reranker"
# What the reranker stage reads (its key); its upstreams: the generator checkpoint, the training samples and,
# when it selects on the test set, the test samples.
READS = ("model", "dataset", "cot", "inference.reranker", "accelerate.mixed_precision", "root.seed")
BEST_SCORES_FILE = "test_scores.json"  # best_on_test: best/test_scores.json, the scores of the best evaluation


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
        out = right_pad([{"input_ids": self.tok(b["text"], add_special_tokens=self.add_special)["input_ids"]
                          [: self.max_length]} for b in batch], self.tok.pad_token_id)
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


def within_question_auc(probs: Sequence[float], labels: Sequence[int], groups: Sequence[str]) -> float | None:
    """Mean over the questions that have both a correct and a wrong candidate of :func:`roc_auc` within the
    question: how well the scores rank one question's candidates, which is all reranking uses. A pooled AUC
    also rewards telling easy questions from hard ones (every sample of a hard question scored low), which
    picks nothing. None when no question has both classes."""
    by_group: dict[str, tuple[list[float], list[int]]] = {}
    for p, y, g in zip(probs, labels, groups):
        by_group.setdefault(g, ([], []))
        by_group[g][0].append(p)
        by_group[g][1].append(y)
    aucs = [a for a in (roc_auc(ps, ys) for ps, ys in by_group.values()) if a is not None]
    return sum(aucs) / len(aucs) if aucs else None


def heldout_split(examples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``fraction`` of the QUESTIONS (all their samples), chosen by a seeded permutation."""
    ids = sorted({e["item_id"] for e in examples}, key=str)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ids), generator=g).tolist()
    held = {ids[i] for i in order[: int(round(fraction * len(ids)))]}
    return [e for e in examples if e["item_id"] not in held], [e for e in examples if e["item_id"] in held]


class RerankerTask(Task):
    """The classifier's training as a runner task: CE on (question + sample, correct?) pairs, AdamW, linear
    schedule with warm-up (stepped per global optimizer step, so the state resumes on any process count).
    ``test_eval(model, collate)`` (``best_on_test``) gives the rerank accuracy and scores on the test samples:
    the runner calls it every ``eval_every_steps`` optimizer steps and at each epoch end and keeps the best
    (``save_model`` writes that evaluation's scores)."""

    def __init__(self, ctx: RunContext, rr: RerankerConfig, generator: str, examples: list[dict], test_eval=None):
        acc, cfg = ctx.accelerator, ctx.cfg
        self.ctx, self.rr, self.test_eval = ctx, rr, test_eval
        self.tokenizer = load_tokenizer(generator, cfg.model)
        model = load_classifier(generator, trainable_dtype(cfg.model, cfg.accelerate), num_labels=2)
        model.config.pad_token_id = cfg.model.pad_token_id
        self.collate = ClassifierCollator(self.tokenizer, rr.max_length, cfg.model.add_special_tokens)
        self.train, self.held = heldout_split(examples, rr.heldout_fraction, cfg.root.seed)
        data_order = torch.Generator().manual_seed(cfg.root.seed)
        loader = DataLoader(self.train, batch_size=rr.batch_size, shuffle=True, collate_fn=self.collate,
                            generator=data_order)
        optimizer = torch.optim.AdamW(model.parameters(), lr=rr.lr, weight_decay=rr.weight_decay)
        configure_deepspeed(acc, rr.batch_size, 1, rr.grad_clip)  # DeepSpeed only: its batch/accum/clip values
        self.model, self.optimizer, self.loader = acc.prepare(model, optimizer, loader)
        total = rr.epochs * len(self.loader)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, int(rr.warmup_ratio * total), total)
        self.objects = (GeneratorState(data_order), self.scheduler)
        self.positive = sum(e["label"] for e in self.held) / max(len(self.held), 1)
        self.best_scores = None

    def batches(self, epoch: int):
        self.model.train()
        return self.loader

    def step(self, batch) -> tuple[dict[str, float], bool]:
        acc = self.ctx.accelerator
        loss = self.model(**batch).loss
        acc.backward(loss)
        acc.clip_grad_norm_(self.model.parameters(), self.rr.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        return {"loss": loss.item()}, True

    def heldout_metrics(self) -> dict:
        if not self.held:
            return {"heldout_accuracy": None, "heldout_auc": None, "heldout_auc_within": None}
        probs = p_correct(self.ctx, self.ctx.accelerator.unwrap_model(self.model), self.collate,
                          [e["text"] for e in self.held], self.rr.eval_batch_size, "reranker held-out")
        labels = [e["label"] for e in self.held]
        return {"heldout_accuracy": sum((p >= 0.5) == bool(y) for p, y in zip(probs, labels)) / len(self.held),
                "heldout_auc": roc_auc(probs, labels),
                "heldout_auc_within": within_question_auc(probs, labels, [e["item_id"] for e in self.held])}

    def epoch_summary(self, stats: list[dict[str, float]], seconds: float) -> dict:
        row = {"train_loss": sum(s["loss"] for s in stats) / max(len(stats), 1)} | self.heldout_metrics()
        if self.held:
            log.info("reranker: loss %.4f held-out accuracy %.4f (majority class %.4f), AUC %s pooled, %s within "
                     "a question (0.5 = chance)", row["train_loss"], row["heldout_accuracy"],
                     max(self.positive, 1 - self.positive), _fmt(row["heldout_auc"]), _fmt(row["heldout_auc_within"]))
        else:
            log.info("reranker: loss %.4f (no held-out questions: heldout_fraction 0, as the official reranker, "
                     "trained on every training question)", row["train_loss"])
        return row

    def evaluate(self) -> dict[str, float]:
        accuracy, self.best_scores = self.test_eval(self.ctx.accelerator.unwrap_model(self.model), self.collate)
        self.model.train()
        return {"test_accuracy": accuracy}

    def save_model(self, folder: Path) -> None:  # the best evaluation: its test scores (the model is not needed)
        if self.ctx.accelerator.is_main_process:
            atomic_write_json(folder / BEST_SCORES_FILE, self.best_scores)

    def finish(self, out_dir: Path, progress) -> None:
        save_model(self.ctx.accelerator, self.model, self.tokenizer, out_dir / RERANKER_DIR, self.ctx.cfg.model.dtype)


def train_reranker(ctx: RunContext, rr: RerankerConfig, generator: str, examples: list[dict],
                   out_dir: Path, test_eval=None) -> dict:
    """Train the classifier (the runner: resumable, per-epoch held-out metrics); under ``best_on_test`` the
    test evaluations and the best of them (train_reward_model.py:188-193, 397-402)."""
    task = RerankerTask(ctx, rr, generator, examples, test_eval)
    on_test = test_eval is not None
    sched = Schedule(desc="reranker", epochs=rr.epochs, eval_every_epochs=1 if on_test else None,
                     eval_every_steps=rr.eval_every_steps if on_test else None, save_best=on_test)
    out = train(ctx, out_dir, sched, task)
    selection = {}
    if on_test:
        evals = sorted(out["epochs"] + out.get("evals", []), key=lambda r: (r["step"], "train_loss" in r))
        selection = {"test_evals": [{"epoch": r["epoch"], "step": r["step"], "rerank_accuracy": r["test_accuracy"]}
                                    for r in evals if "test_accuracy" in r],
                     "best_test_rerank_accuracy": out["best_accuracy"], "best_test_epoch": out["best_epoch"],
                     "best_test_step": out["best_step"], "final_test_rerank_accuracy": out["final_accuracy"]}
    last = out["epochs"][-1]
    return selection | {"epochs": out["epochs"], "train_examples": len(task.train),
                        "heldout_examples": len(task.held), "heldout_accuracy": last["heldout_accuracy"],
                        "heldout_auc": last["heldout_auc"], "heldout_auc_within": last.get("heldout_auc_within"),
                        "heldout_chance": max(task.positive, 1 - task.positive) if task.held else None,
                        "train_positive_rate": sum(e["label"] for e in task.train) / max(len(task.train), 1)}


def reranker_stage(ctx: RunContext, generator: str, test_samples: SampleSet | None = None) -> tuple[Stage, dict]:
    """The trained reranker; under ``selection: best_on_test`` it is evaluated on ``test_samples`` while it
    trains (which then are part of its key)."""
    cfg, rr = ctx.cfg, ctx.cfg.inference.reranker
    sft, _ = sft_stage(ctx)
    warmup = sft_checkpoint(ctx, sft, "warmup")
    on_test = rr.selection == "best_on_test"
    if on_test and test_samples is None:
        raise ValueError("reranker selection best_on_test needs the test samples")
    upstream = {"generator": checkpoint_id(generator),
                "train_samples": samples_stage_of(ctx, warmup, "train", rr.train_sampling).hash}
    if on_test:
        upstream["test_samples"] = test_samples.stage.hash
    stage = Stage(ctx.cache_dir, "reranker", f"{cfg.model.name}_{cfg.dataset.name}_{ctx.cot}_s{cfg.root.seed}",
                  stage_key(cfg, READS, upstream))
    questions = {r["item_id"]: r["question"] for r in ctx.splits["train"]}

    def compute(folder: Path) -> dict:  # the training samples are drawn (or read) only when training
        train_samples = sample_stage(ctx, warmup, "train", rr.train_sampling)
        examples = reranker_examples(questions, train_samples, ctx.cot)
        test_eval = None
        if on_test:
            slots, texts = test_candidates(ctx, test_samples)

            def test_eval(model, collate):
                probs = p_correct(ctx, model, collate, texts, rr.eval_batch_size, "rerank test")
                scores = scores_from_probs(test_samples, slots, probs)
                return rerank_accuracy(test_samples, scores), scores

        return train_reranker(ctx, rr, generator, examples, folder, test_eval)  # the runner times it

    reused = run_stage(stage, ctx.accelerator, compute, seed=cfg.root.seed)
    if not reused and ctx.accelerator.is_main_process:
        remove_state(stage.dir)  # complete: the resumable state is dead weight
    ctx.note_stage(stage, reused)
    return stage, stage.meta()


def test_candidates(ctx: RunContext, samples: SampleSet) -> tuple[list[tuple[int, int]], list[str]]:
    """(row, sample) slot and reranker input text of every unique valid candidate of the test samples
    (multiple choice: a single letter, :func:`reft_exp.answers.rerank_candidate`)."""
    questions = {r["item_id"]: r["question"] for r in ctx.splits["test"]}
    slots, texts = [], []
    for i, row in enumerate(samples.rows):
        seen: set[str] = set()
        for j, s in enumerate(row["samples"]):
            if rerank_candidate(s["pred"], ctx.spec) is None or s["text"] in seen:
                continue
            seen.add(s["text"])
            slots.append((i, j))
            texts.append(build_prompt(questions[row["item_id"]], ctx.cot) + s["text"])
    return slots, texts


def scores_from_probs(samples: SampleSet, slots: list[tuple[int, int]],
                      probs: list[float]) -> list[list[float | None]]:
    scores: list[list[float | None]] = [[None] * len(r["samples"]) for r in samples.rows]
    for (i, j), p in zip(slots, probs):
        scores[i][j] = p
    return scores


def rerank_scores(ctx: RunContext, stage: Stage, samples: SampleSet) -> list[list[float | None]]:
    """P(correct) of every test sample from the final reranker (None for invalid or duplicate ones), cached
    beside the reranker."""
    path = stage.dir / f"test_scores_{samples.stage.hash}.json"
    if path.exists():
        return json.loads(path.read_text())
    cfg, rr = ctx.cfg, ctx.cfg.inference.reranker
    slots, texts = test_candidates(ctx, samples)
    folder = stage.dir / RERANKER_DIR
    tokenizer = load_tokenizer(folder, cfg.model)
    model = load_classifier(folder, cfg.model.dtype)
    model.config.pad_token_id = cfg.model.pad_token_id
    model.to(ctx.accelerator.device)
    with ctx.timer("reranker_score"):
        probs = p_correct(ctx, model, ClassifierCollator(tokenizer, rr.max_length, cfg.model.add_special_tokens),
                          texts, rr.eval_batch_size, "rerank test")
    scores = scores_from_probs(samples, slots, probs)
    if ctx.accelerator.is_main_process:
        atomic_write_json(path, scores)
    return scores


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def uniform_pick_accuracy(samples: SampleSet, slots: list[tuple[int, int]]) -> float:
    """The expected accuracy of a pick made uniformly among each question's unique valid candidates (the
    ``slots`` of :func:`test_candidates`): a reranker that knows nothing. Below a random sample when right
    answers repeat more than wrong ones, since a unique candidate counts once however often it was drawn."""
    per_row: dict[int, list[bool]] = {}
    for i, j in slots:
        per_row.setdefault(i, []).append(bool(samples.rows[i]["samples"][j]["correct"]))
    return sum(sum(c) / len(c) for c in per_row.values()) / max(len(samples.rows), 1)


def scores_auc_within(samples: SampleSet, scores: list[list[float | None]]) -> float | None:
    """:func:`within_question_auc` of the scored test candidates against their correctness: how well the
    reranker ranks each question's candidates (a diagnostic that reads the test labels, as the upper bound)."""
    probs, labels, groups = [], [], []
    for row, sc in zip(samples.rows, scores):
        for s, p in zip(row["samples"], sc):
            if p is not None:
                probs.append(p)
                labels.append(int(s["correct"]))
                groups.append(row["item_id"])
    return within_question_auc(probs, labels, groups)


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
    rr = ctx.cfg.inference.reranker
    stage, meta = reranker_stage(ctx, generator, samples)
    # official: the best test accuracy seen in training (optimistic), train_reward_model.py:188-193, 397-402
    if rr.selection == "best_on_test":
        accuracy, final_accuracy = meta["best_test_rerank_accuracy"], meta["final_test_rerank_accuracy"]
        scores = json.loads((stage.dir / "best" / BEST_SCORES_FILE).read_text())
    else:
        scores = rerank_scores(ctx, stage, samples)
        accuracy = final_accuracy = rerank_accuracy(samples, scores)
    stats = vote_stats(ctx, samples)
    uniform = uniform_pick_accuracy(samples, test_candidates(ctx, samples)[0])
    auc_within = scores_auc_within(samples, scores)
    log.info("rerank: accuracy %.4f (%s; final model %.4f; a uniform pick among the same candidates %.4f, test "
             "AUC within a question %s; vote %.4f, upper bound %.4f, greedy %.4f)", accuracy, rr.selection,
             final_accuracy, uniform, _fmt(auc_within), stats["vote_accuracy"], stats["upper_bound"],
             method_out["train"]["best_accuracy"])
    return {"name": "rerank", "accuracy": accuracy, "selection": rr.selection, "uniform_pick_accuracy": uniform,
            "test_auc_within": auc_within,
            "selected_on_test": rr.selection == "best_on_test", "final_model_accuracy": final_accuracy,
            "test_evals": meta.get("test_evals"), **stats,
            "num_samples": ctx.cfg.inference.sampling.num_samples,
            "greedy_accuracy": method_out["train"]["best_accuracy"], "checkpoint": generator,
            "samples_stage": str(samples.stage.dir), "reranker_stage": str(stage.dir),
            "reranker": {k: meta.get(k) for k in ("heldout_accuracy", "heldout_auc", "heldout_auc_within",
                                               "heldout_chance", "train_examples", "heldout_examples",
                                               "train_positive_rate")},
            "reranker_epochs": meta["epochs"]}
