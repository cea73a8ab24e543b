"""Batched generation shared by evaluation, sampling and RL rollouts, and the one decode every path uses.

Prompts are sorted by length (less padding), left-padded by the tokenizer itself, generated in batches, and
returned in the original order. Under several processes each takes a contiguous shard and the results are
gathered.

Decoding (:func:`decode_answer`): prompt and response are decoded TOGETHER and cut at the prompt boundary, as
upstream does (``train_rl_reft.py:294-295``, ``sampling.py:164,179``: the whole sequence is decoded and the
text after the last ``"\\nAnswer reasoning:\\n"`` kept). Decoding the response on its own breaks on
SentencePiece tokenizers (Llama / CodeLlama drop one leading space from the first token of a decode: the first
program line after a P-CoT header gets 3 spaces instead of 4, an IndentationError). docs/text_path.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from reft_exp.answers import COT_TRIGGER
from reft_exp.config import ConfigError
from reft_exp.prompts import prompt_for_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodingConfig:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off (official RL sampling, train_rl_reft.py:280: top_k 0, top_p 1, temperature 1)
    top_p: float = 1.0
    max_new_tokens: int = 400
    num_return_sequences: int = 1
    # prompt + response tokens over the left-padded batch, as HF generate(max_length=...) (upstream's only
    # length limit: train_rl_reft.py:683-686, train_sft_model.py:303-305, sampling.py:156); None = max_new_tokens
    max_length: int | None = None


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


# ------------------------------------------------------------------------------------------- prompt side
def encode_prompts(tokenizer, prompts: Sequence[str], add_special_tokens: bool = True,
                   max_prompt_length: int | None = None) -> list[list[int]]:
    """Token ids of each prompt; with ``max_prompt_length`` longer prompts keep their FIRST ``max_prompt_length``
    tokens (upstream ``prefix = prefix[:args['max_input_length']]``, train_rl_reft.py:169; sampling.py:78 the
    same through ``truncation=True``), they are not dropped."""
    if not prompts:
        return []
    ids = tokenizer([prompt_for_tokenizer(tokenizer, p) for p in prompts], add_special_tokens=add_special_tokens)["input_ids"]
    if max_prompt_length is not None:
        ids = [e[:max_prompt_length] for e in ids]
    return [list(e) for e in ids]


def left_pad(tokenizer, id_lists: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of the prompts left-padded with the tokenizer's pad id (its own padding)."""
    batch = tokenizer.pad({"input_ids": [list(e) for e in id_lists]}, padding=True, padding_side="left",
                          return_attention_mask=True, return_tensors="pt")
    return batch["input_ids"].long(), batch["attention_mask"].long()


def check_fits(prompt_lengths: Sequence[int], max_length: int | None, length_key: str) -> None:
    """A prompt that leaves no room for a response under a total budget: one line naming the config key."""
    if max_length is None or not prompt_lengths:
        return
    longest = max(prompt_lengths)
    if longest >= max_length:
        n = sum(length >= max_length for length in prompt_lengths)
        raise ConfigError(f"{length_key}={max_length}: {n} prompt(s) are already {longest} tokens or longer, "
                          f"no room for a response; raise {length_key}")


def new_token_budget(width: int, decoding: DecodingConfig) -> int:
    """New tokens for a left-padded batch of ``width``: ``max_length - width`` (HF generate(max_length=...) over the
    padded batch, as the official code, train_rl_reft.py:287) when a total is set, else ``max_new_tokens``."""
    return decoding.max_new_tokens if decoding.max_length is None else decoding.max_length - width


# ----------------------------------------------------------------------------------------- response side
def _cut_at_eos(ids: Sequence[int], eos_token_id: int | None) -> list[int]:
    """A response up to (not including) its first EOS; a list of ints."""
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    if eos_token_id is not None and eos_token_id in ids:
        ids = ids[: ids.index(eos_token_id)]
    return ids


_warned_prefix = False
_DECODE = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}


def _split(head: str, joint: str) -> tuple[str, str]:
    """``(head, completion)``: the joint decode cut where the decoded prompt ends."""
    global _warned_prefix
    if joint.startswith(head):
        return head, joint[len(head):]
    # Not seen with the tokenizers of tests/text_tokenizers.py; keep what the two decodes share and say so once.
    common = 0
    for a, b in zip(head, joint):
        if a != b:
            break
        common += 1
    if not _warned_prefix:
        _warned_prefix = True
        log.warning("decoded prompt is not a prefix of the decoded prompt + response (%r vs %r); splitting where "
                    "they first differ", head[common:common + 20], joint[common:common + 20])
    return head, joint[common:]


def split_decoded(tokenizer, prompt_ids: Sequence[int], response_ids: Sequence[int],
                  prompt_text: str | None = None) -> tuple[str, str]:
    """``(decoded prompt, completion)``: prompt + response (cut at its first EOS) decoded together, the completion
    being what follows the decoded prompt. ``prompt_text``: the prompt's decode when the caller has it."""
    prompt_ids = _cut_at_eos(prompt_ids, None)
    response = _cut_at_eos(response_ids, tokenizer.eos_token_id)
    head = tokenizer.decode(prompt_ids, **_DECODE) if prompt_text is None else prompt_text
    return _split(head, tokenizer.decode(prompt_ids + response, **_DECODE))


def answer_text(prompt_text: str, completion: str) -> str:
    """The chain of thought a generation holds, as scored and stored: the prompt's text after its last
    ``"\\nAnswer reasoning:\\n"`` (the P-CoT header where the prompt carries it, exactly as the model saw it,
    truncation included; nothing for a plain prompt) + the completion, stripped. This is upstream's
    ``text.strip().split(cot_trigger)[-1].strip()`` of the joint decode (train_rl_reft.py:295) without letting
    a trigger the model writes itself move the boundary."""
    return (prompt_text.split(COT_TRIGGER)[-1] + completion).strip()


def decode_answer(tokenizer, prompt_ids: Sequence[int], response_ids: Sequence[int],
                  prompt_text: str | None = None) -> str:
    """THE decode of every path (greedy evaluation, sampling, RL rollouts): (prompt ids, generated ids) ->
    the answer text scored and stored (header + completion for a header prompt). See :func:`split_decoded`
    and :func:`answer_text`."""
    head, completion = split_decoded(tokenizer, prompt_ids, response_ids, prompt_text)
    return answer_text(head, completion)


def decode_answers(tokenizer, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                   per_prompt: int = 1) -> list[str]:
    """:func:`decode_answer` of each response (batched decodes); response ``j`` follows prompt ``j // per_prompt``.
    The sequences go to ``batch_decode`` as numpy arrays (transformers checks a Python list element by element)."""
    prompts = [_cut_at_eos(p, None) for p in prompt_ids]
    heads = tokenizer.batch_decode([np.asarray(p, dtype=np.int64) for p in prompts], **_DECODE)
    joints = tokenizer.batch_decode([np.asarray(prompts[j // per_prompt] + _cut_at_eos(r, tokenizer.eos_token_id),
                                                dtype=np.int64) for j, r in enumerate(response_ids)], **_DECODE)
    return [answer_text(*_split(heads[j // per_prompt], joint)) for j, joint in enumerate(joints)]


# ---------------------------------------------------------------------------------------------- generation
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
    max_length: int | None = None,
    length_key: str = "max_length",
    max_prompt_length: int | None = None,
) -> list[list[str]]:
    """For each prompt, ``num_return_sequences`` answer texts (:func:`decode_answer`: the P-CoT header of a
    header prompt included, stripped).

    ``max_length``: prompt + response tokens (overrides ``decoding.max_length``; None keeps it); a prompt that
    leaves no room raises a :class:`ConfigError` naming ``length_key``. ``max_prompt_length``: prompts keep their
    first that many tokens (:func:`encode_prompts`). ``engine``: a :mod:`reft_exp.engines` engine; None = the
    process default (``rollout.engine``)."""
    from reft_exp.engines import default_engine

    if max_length is not None:
        decoding = DecodingConfig(**{**decoding.__dict__, "max_length": max_length})
    engine = engine or default_engine()
    model = _unwrap(model)
    enc = encode_prompts(tokenizer, prompts, add_special_tokens, max_prompt_length)
    check_fits([len(e) for e in enc], decoding.max_length, length_key)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))
    out: list[list[str] | None] = [None] * len(prompts)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    gen_kwargs = dict(
        do_sample=decoding.do_sample, temperature=decoding.temperature, top_k=decoding.top_k, top_p=decoding.top_p,
        pad_token_id=pad_id, eos_token_id=eos_id, num_return_sequences=decoding.num_return_sequences,
    )
    k = decoding.num_return_sequences
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
        ids, attn = left_pad(tokenizer, [enc[i] for i in idx])
        width = ids.shape[1]
        seqs = engine.generate(model, ids.to(device), attn.to(device),
                               max_new_tokens=new_token_budget(width, decoding), **gen_kwargs)
        texts = decode_answers(tokenizer, [enc[i] for i in idx], seqs[:, width:].tolist(), per_prompt=k)
        for row, i in enumerate(idx):
            out[i] = texts[row * k : (row + 1) * k]
    if was_training:
        model.train()
    return out  # type: ignore[return-value]


def generate_distributed(accelerator, model, tokenizer, prompts: Sequence[str], decoding: DecodingConfig,
                         batch_size: int, add_special_tokens: bool = True, progress: bool = False,
                         desc: str = "generate", engine=None, max_length: int | None = None,
                         length_key: str = "max_length", max_prompt_length: int | None = None) -> list[list[str]]:
    """Shard prompts over processes, generate, gather in the original order (every process gets all)."""
    from accelerate.utils import gather_object

    if accelerator is None or accelerator.num_processes == 1:
        return generate_texts(model, tokenizer, prompts, decoding, batch_size, add_special_tokens, progress, desc,
                              engine, max_length=max_length, length_key=length_key,
                              max_prompt_length=max_prompt_length)
    with accelerator.split_between_processes(list(prompts)) as shard:
        local = generate_texts(model, tokenizer, shard, decoding, batch_size, add_special_tokens,
                               progress and accelerator.is_main_process, desc, engine, max_length=max_length,
                               length_key=length_key, max_prompt_length=max_prompt_length)
    return gather_object(local)
