"""Greedy decoding. As in the paper, the cell's number is the best epoch's greedy test accuracy, already
measured by the method every epoch; nothing is generated again here. For ReFT and online self-training the
best epoch is one of 1.. (the warm-up never counts, train_rl_reft.py:854); the warm-up's accuracy is kept
beside it as ``warmup_accuracy``.

``inference.header_check`` (ours, P-CoT): the official protocol evaluates the SFT-recipe methods (SFT, offline
self-training) from the question alone, the model writing the program header itself (train_sft_model.py:107-109),
while the RL evaluations (train_rl_reft.py:152-153) and the vote / rerank samples (sampling.py:75-77) have the
header in the prompt. So the reported checkpoint of such a method is also evaluated with the header in the prompt
(a cached ``greedy_eval`` stage, the SFT evaluation's lengths): ``accuracy_with_header``, the number to set beside
ReFT's greedy accuracy or the method's own vote under one prompt (docs/claims.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reft_exp.evaluate import cached_greedy_eval, eval_outputs, greedy_eval
from reft_exp.models import load_causal_lm, load_tokenizer


def header_eval(ctx, checkpoint: str) -> dict[str, Any]:
    """Greedy test accuracy of ``checkpoint`` with the P-CoT header in the prompt (cached per checkpoint)."""
    cfg = ctx.cfg
    sft = cfg.sft

    def evaluate() -> dict:
        acc = ctx.accelerator
        model = load_causal_lm(checkpoint, cfg.model).to(acc.device)
        tokenizer = load_tokenizer(checkpoint, cfg.model)
        res = greedy_eval(acc, model, tokenizer, ctx.splits["test"], ctx.spec, cfg.inference.max_new_tokens,
                          sft.eval_batch_size, cfg.model.add_special_tokens, cfg.root.progress,
                          ctx.executor_if_needed, with_header=True, max_length=sft.eval_max_length,
                          length_key="sft.eval_max_length")
        return {"test_accuracy": res.accuracy, "outputs": eval_outputs(ctx.splits["test"], res)}

    settings = {"with_header": True, "max_length": sft.eval_max_length, "batch_size": sft.eval_batch_size}
    return cached_greedy_eval(ctx, checkpoint, settings, evaluate, name="header_eval")


def run(ctx, method_out: dict[str, Any]) -> dict[str, Any]:
    train = method_out["train"]
    out = {"name": "greedy", "accuracy": train["best_accuracy"], "epoch": train["best_epoch"]}
    if train.get("warmup_accuracy") is not None:
        out["warmup_accuracy"] = train["warmup_accuracy"]
    evaluated_with_header = getattr(ctx.cfg.method, "eval_with_header", False)  # the RL methods' setting
    checkpoint = method_out.get("checkpoint")  # an SFT run with sft.save_best false keeps no best/
    if (ctx.cfg.inference.header_check and ctx.cot == "p" and not evaluated_with_header and checkpoint
            and Path(checkpoint).is_dir()):
        out["accuracy_with_header"] = header_eval(ctx, checkpoint)["test_accuracy"]
    return out
