"""Tokenization and collation of (prompt, target) pairs for supervised losses (SFT, self-training)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reft_exp.config import ConfigError
from reft_exp.prompts import build_prompt, build_target

IGNORE_INDEX = -100  # label value ignored by the cross-entropy loss


def encode_example(tokenizer, prompt: str, target: str, max_length: int, add_special_tokens: bool = True,
                   length_key: str = "sft.max_length") -> dict:
    """``input_ids`` = prompt + target + EOS; loss only on target + EOS (prompt labels ignored).

    Prompt and target are tokenized separately and concatenated (upstream train_sft_model.py:111-117), so the
    first label is the first token of the target. Cut from the right to ``max_length`` as upstream
    (train_sft_model.py:124-128: a long answer loses its end, EOS included). A prompt that alone fills
    ``max_length`` would leave no answer token to learn from (the official code trains on it silently, every
    label ignored, train_sft_model.py:123-125): a one-line :class:`ConfigError` naming ``length_key``."""
    p_ids = list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
    if len(p_ids) >= max_length:
        raise ConfigError(f"{length_key}={max_length}: a prompt is {len(p_ids)} tokens, so its answer would be "
                          f"cut away entirely ({prompt[:60]!r}...); raise {length_key}")
    t_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    ids = (p_ids + t_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(p_ids) + t_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


def encode_records(tokenizer, records: Sequence[dict], cot: str, max_length: int,
                   add_special_tokens: bool = True, length_key: str = "sft.max_length") -> list[dict]:
    """SFT examples from upstream-schema records (the model writes the P-CoT header itself)."""
    return [
        encode_example(tokenizer, build_prompt(r["question"], cot), build_target(r, cot), max_length,
                       add_special_tokens, length_key)
        for r in records
    ]


def right_pad(examples: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pads token lists into a batch: ``input_ids`` with ``pad_token_id``, ``labels`` (when the examples
    have them) with :data:`IGNORE_INDEX`, plus the ``attention_mask``. The one right-padding collator."""
    width = max(len(e["input_ids"]) for e in examples)
    n = len(examples)
    ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    has_labels = "labels" in examples[0]
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[i, :k] = torch.as_tensor(e["input_ids"], dtype=torch.long)
        attn[i, :k] = 1
        if has_labels:
            labels[i, :k] = torch.as_tensor(e["labels"], dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": attn}
    if has_labels:
        out["labels"] = labels
    return out


class PadCollator:
    """Right-pads a list of encoded examples into a batch (:func:`right_pad`)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        return right_pad(examples, self.pad_token_id)


class LengthBucketBatchSampler:
    """Shuffled batches of similar length: less padding, every example once per epoch.

    Each epoch: shuffle the indices, cut them into pools of ``pool`` batches, sort each pool by length and
    cut it into batches, then shuffle the batches (so long and short batches alternate). All randomness is
    drawn from ``generator`` (seeded alike on every process; accelerate shards the batches, and a resumed run
    restores the generator's state, as for a plain shuffled loader).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator, pool: int = 50,
                 drop_last: bool = False):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator
        self.pool = max(pool, 1)
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        g = self.generator
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        span = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        for k in torch.randperm(len(batches), generator=g).tolist():
            yield batches[k]


def sft_loader(examples: Sequence[dict], batch_size: int, generator: torch.Generator, pad_token_id: int,
               length_bucketing: bool = False, pool: int = 50):
    """The SFT DataLoader: plain shuffled batches (the official code, train_sft_model.py:198) or
    length-bucketed ones (less padding)."""
    from torch.utils.data import DataLoader

    collate = PadCollator(pad_token_id)
    if length_bucketing:
        sampler = LengthBucketBatchSampler([len(e["input_ids"]) for e in examples], batch_size, generator, pool)
        return DataLoader(examples, batch_sampler=sampler, collate_fn=collate)
    return DataLoader(examples, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate)


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of the padded ``batch x width`` cells that are padding."""
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return 1.0 - real / max(total, 1)
