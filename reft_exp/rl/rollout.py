"""Rollouts shared by the RL methods (ReFT, online self-training): sample one response per question, score
it, and lay prompt + response out as tensors in which response action ``t`` is column ``P + t``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reft_exp.answers import AnswerSpec, extract_answers, parse_gold, reward
from reft_exp.generation import check_fits, decode_answers, encode_prompts, left_pad
from reft_exp.prompts import build_prompt


@dataclass
class Rollout:
    records: list[dict]
    # the answer text of each response (reft_exp.generation.decode_answer: prompt + response decoded together
    # and cut at the prompt; for P-CoT the header of the prompt + the response, i.e. the whole program)
    completions: list[str]
    input_ids: torch.Tensor  # [B, P + R]: left-padded prompts, then responses right-padded with pad
    attention_mask: torch.Tensor  # [B, P + R]
    response_mask: torch.Tensor  # [B, R] float: 1 on response tokens up to and including the first EOS
    prompt_width: int  # P
    scores: torch.Tensor | None = None  # [B] reward of each response
    preds: list | None = None

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions that skip the left padding, as ``generate`` used them."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]


def rl_prompts(records: Sequence[dict], cot: str) -> list[str]:
    """At RL and sampling time the P-CoT program header is part of the prompt (the official code,
    train_rl_reft.py:152-153, sampling.py:76-77)."""
    return [build_prompt(r["question"], cot, with_header=True) for r in records]


def response_mask_from_ids(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row (all ones when truncated), 0 after."""
    is_eos = (response_ids == eos_token_id).long()
    eos_before = is_eos.cumsum(-1) - is_eos  # number of EOS strictly before each position
    return (eos_before == 0).float()


def rollout_from_ids(tokenizer, records: Sequence[dict], prompt_ids: Sequence[Sequence[int]], seqs: torch.Tensor,
                     prompt_attention: torch.Tensor) -> Rollout:
    """The post-generation half of :func:`sample_rollout`: ``seqs`` = [B, P + R] (left-padded prompts, then what
    was generated); responses are masked after their first EOS, replaced there by pad, and decoded with the
    prompt (:func:`reft_exp.generation.decode_answers`)."""
    width = prompt_attention.shape[1]
    pad = tokenizer.pad_token_id
    response = seqs[:, width:]
    rmask = response_mask_from_ids(response, tokenizer.eos_token_id).to(response.device)
    attention = torch.cat([prompt_attention.to(seqs.device), rmask.long()], dim=1)
    # responses beyond their EOS are padding: make them the pad token so nothing reads them
    seqs = torch.cat([seqs[:, :width], torch.where(rmask.bool(), response, torch.full_like(response, pad))], 1)
    completions = decode_answers(tokenizer, prompt_ids, seqs[:, width:].tolist())
    return Rollout(records=list(records), completions=completions, input_ids=seqs, attention_mask=attention,
                   response_mask=rmask, prompt_width=width)


@torch.no_grad()
def sample_rollout(model, tokenizer, records: Sequence[dict], cot: str, max_length: int, temperature: float,
                   top_k: int, top_p: float, add_special_tokens: bool = True, engine=None, *,
                   max_prompt_length: int | None = None, length_key: str = "method.max_length") -> Rollout:
    """One sampled response per record (top_k 0 = off, as the official RL, train_rl_reft.py:280); prompt +
    response <= ``max_length`` over the left-padded batch (the official generate(max_length=max_gen_length),
    train_rl_reft.py:287).

    ``max_prompt_length``: prompts keep their first ``max_prompt_length`` tokens (train_rl_reft.py:169), none is
    dropped. ``engine``: a :mod:`reft_exp.engines` engine; None = the process default (``rollout.engine``)."""
    from reft_exp.engines import default_engine

    engine = engine or default_engine()
    enc = encode_prompts(tokenizer, rl_prompts(records, cot), add_special_tokens, max_prompt_length)
    check_fits([len(e) for e in enc], max_length, length_key)
    ids, attn = left_pad(tokenizer, enc)
    width = ids.shape[1]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seqs = engine.generate(model, ids.to(device), attn.to(device), do_sample=True, temperature=temperature,
                           top_k=top_k, top_p=top_p, max_new_tokens=max_length - width,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if was_training:
        model.train()
    return rollout_from_ids(tokenizer, records, enc, seqs, attn)


def score_rollout(ro: Rollout, spec: AnswerSpec, executor=None) -> Rollout:
    """Fill ``scores`` with the ReFT reward (1 / partial / 0) of each response. ``completions`` already hold the
    whole answer (for P-CoT: the prompt's header + the response)."""
    preds = extract_answers(ro.completions, spec, executor=executor)
    golds = [parse_gold(r["answer_value"], spec) for r in ro.records]
    ro.preds = preds
    ro.scores = torch.tensor([reward(p, g, spec) for p, g in zip(preds, golds)], dtype=torch.float32)
    return ro


def rollout_rows(ro: Rollout) -> list[dict]:
    """A scored rollout as readable rows: question, completion (the whole program for P-CoT), extracted answer,
    gold, reward."""
    scores = ro.scores.tolist() if ro.scores is not None else [None] * len(ro.records)
    preds = ro.preds if ro.preds is not None else [None] * len(ro.records)
    return [{"item_id": r["item_id"], "question": r["question"], "completion": c, "pred": p,
             "gold": r["answer_value"], "reward": s}
            for r, c, p, s in zip(ro.records, ro.completions, preds, scores)]
