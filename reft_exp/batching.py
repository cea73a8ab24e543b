"""Tokenization and collation of (prompt, target) pairs for supervised losses (SFT, self-training)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reft_exp.prompts import build_prompt, build_target

IGNORE_INDEX = -100  # label value ignored by the cross-entropy loss


def encode_example(tokenizer, prompt: str, target: str, max_length: int, add_special_tokens: bool = True) -> dict:
    """``input_ids`` = prompt + target + EOS; loss only on target + EOS (prompt labels ignored).

    Truncated from the right to ``max_length`` (upstream behaviour)."""
    p_ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    t_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p_ids + t_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(p_ids) + t_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


def encode_records(tokenizer, records: Sequence[dict], cot: str, max_length: int,
                   add_special_tokens: bool = True) -> list[dict]:
    """SFT examples from upstream-schema records (the model writes the P-CoT header itself)."""
    return [
        encode_example(tokenizer, build_prompt(r["question"], cot), build_target(r, cot), max_length,
                       add_special_tokens)
        for r in records
    ]


class PadCollator:
    """Right-pads a list of encoded examples into a batch."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        n = len(examples)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attn = torch.zeros((n, width), dtype=torch.long)
        for i, e in enumerate(examples):
            k = len(e["input_ids"])
            ids[i, :k] = torch.tensor(e["input_ids"])
            labels[i, :k] = torch.tensor(e["labels"])
            attn[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": attn}
