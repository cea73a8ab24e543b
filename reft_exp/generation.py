"""Batched generation shared by evaluation, sampling and RL rollouts.

Prompts are sorted by length (less padding), left-padded, generated in batches, and returned in the
original order. Under several processes each takes a contiguous shard and the results are gathered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class DecodingConfig:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off (upstream RL sampling: top_k 0, top_p 1, temperature 1)
    top_p: float = 1.0
    max_new_tokens: int = 400
    num_return_sequences: int = 1


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def generate_texts(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    decoding: DecodingConfig,
    batch_size: int,
    add_special_tokens: bool = True,
    progress: bool = False,
    desc: str = "generate",
    engine=None,
) -> list[list[str]]:
    """For each prompt, ``num_return_sequences`` completions (decoded without special tokens).

    ``engine``: a :mod:`reft_exp.engines` engine; None = the process default (``rollout.engine``)."""
    from reft_exp.engines import default_engine

    engine = engine or default_engine()
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    enc = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))
    out: list[list[str] | None] = [None] * len(prompts)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    gen_kwargs = dict(
        max_new_tokens=decoding.max_new_tokens, do_sample=decoding.do_sample, temperature=decoding.temperature,
        top_k=decoding.top_k, top_p=decoding.top_p, pad_token_id=pad_id, eos_token_id=eos_id,
        num_return_sequences=decoding.num_return_sequences,
    )
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(enc[i]) :] = torch.tensor(enc[i])
            attn[row, width - len(enc[i]) :] = 1
        seqs = engine.generate(model, ids.to(device), attn.to(device), **gen_kwargs)
        texts = tokenizer.batch_decode(seqs[:, width:], skip_special_tokens=True)
        k = decoding.num_return_sequences
        for row, i in enumerate(idx):
            out[i] = texts[row * k : (row + 1) * k]
    if was_training:
        model.train()
    return out  # type: ignore[return-value]


def generate_distributed(accelerator, model, tokenizer, prompts: Sequence[str], decoding: DecodingConfig,
                         batch_size: int, add_special_tokens: bool = True, progress: bool = False,
                         desc: str = "generate", engine=None) -> list[list[str]]:
    """Shard prompts over processes, generate, gather in the original order (every process gets all)."""
    from accelerate.utils import gather_object

    if accelerator is None or accelerator.num_processes == 1:
        return generate_texts(model, tokenizer, prompts, decoding, batch_size, add_special_tokens, progress, desc,
                              engine)
    with accelerator.split_between_processes(list(prompts)) as shard:
        local = generate_texts(model, tokenizer, shard, decoding, batch_size, add_special_tokens,
                               progress and accelerator.is_main_process, desc, engine)
    return gather_object(local)
