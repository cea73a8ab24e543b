"""The ReFT actor-critic: the causal LM policy plus a value head.

``critic_shared=True`` (the official code, TRL's value-head model, train_rl_reft.py:775-776): the value head
is a fresh ``Linear(hidden, 1)`` on the policy's last hidden state, so one forward pass gives logits and
values. ``critic_shared=False`` (the paper's ablation): a separate value model (a copy of the warm-up LM)
carries the head.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import torch
from torch import nn

from reft_exp.rl.ppo_core import logprobs_from_logits

# Dropout rates that transformers models apply functionally, kept as float attributes of their layers (OPT /
# Galactica: ``dropout``, ``attention_dropout``, ``activation_dropout``; Llama: ``attention_dropout``) and in
# their configs: no nn.Dropout module to see.
DROPOUT_RATE_FIELDS = ("dropout", "attention_dropout", "activation_dropout", "hidden_dropout", "attn_pdrop",
                       "resid_pdrop", "embd_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob")


def _rate(x) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0.0


def has_dropout(model: nn.Module) -> bool:
    """Whether train mode may change ``model``'s forward pass: an ``nn.Dropout`` with p > 0, or a dropout rate
    above 0 on a layer or in a config (conservative: a config rate counts even when the layers were zeroed)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout) and m.p > 0:
            return True
        for owner in (m, getattr(m, "config", None)):
            if owner is not None and any(_rate(getattr(owner, f, None)) > 0 for f in DROPOUT_RATE_FIELDS):
                return True
    return False


def disable_dropout(model: nn.Module) -> None:
    """Dropout off in train mode: ``nn.Dropout`` modules and the rates layers apply functionally (Llama has
    none; Galactica/OPT 0.1, applied through float layer attributes). The config is left as it was saved."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        for f in DROPOUT_RATE_FIELDS:
            if _rate(getattr(m, f, None)) > 0:
                setattr(m, f, 0.0)


class PolicyWithValue(nn.Module):
    def __init__(self, lm: nn.Module, value_lm: nn.Module | None = None, zero_head: bool = False):
        super().__init__()
        self.lm = lm
        self.value_lm = value_lm
        hidden = (value_lm or lm).config.hidden_size
        self.v_head = nn.Linear(hidden, 1)
        self.v_head.to(dtype=torch.float32)
        if zero_head:  # V = 0 everywhere at the start: the first advantages are the returns alone
            nn.init.zeros_(self.v_head.weight)
            nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, K, V], values [B, L])``: the logits of the last ``logits_to_keep`` positions (0 = all L,
        K = L); the value at position i is V of the state after token i. A separate value model's own logits
        are never used: it computes those of one position only."""
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      output_hidden_states=self.value_lm is None, **_keep(self.lm, logits_to_keep))
        if self.value_lm is None:
            hidden = out.hidden_states[-1]
        else:
            hidden = self.value_lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   output_hidden_states=True, **_keep(self.value_lm, 1)).hidden_states[-1]
        # in the head's own dtype: float32 (set above), unless DeepSpeed's bf16 engine cast the whole module to bf16,
        # where a float32 input would not match the weight; the values leave in float32 either way
        values = self.v_head(hidden.to(self.v_head.weight.dtype)).float().squeeze(-1)
        return out.logits, values

    def save_value_head(self, folder: str | Path) -> None:
        torch.save(self.v_head.state_dict(), Path(folder) / "value_head.pt")


def _keep(model: nn.Module, n: int) -> dict:
    """``logits_to_keep=n`` for a causal LM's forward when its class takes the keyword (Llama and OPT since
    transformers 4.50): its LM head then runs on the last ``n`` positions only; else, or for n = 0, nothing (all
    positions, which :func:`action_logits` slices)."""
    return {"logits_to_keep": n} if n and _takes_logits_to_keep(type(getattr(model, "module", model))) else {}


@functools.cache
def _takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def action_logits(logits: torch.Tensor, width: int, prompt_width: int) -> torch.Tensor:
    """The logits ``[B, R, V]`` of the actions that emit the response tokens (positions ``P - 1 .. L - 2`` of a
    sequence of ``width`` L whose responses start at column ``P``), from ``logits`` of all L positions or of the
    last ``L - P + 1`` (``logits_to_keep``; a model that ignores the keyword returns all L)."""
    return logits[:, prompt_width - 1 : -1] if logits.shape[1] == width else logits[:, :-1]


def response_logits(lm: nn.Module, ro) -> torch.Tensor:
    """A causal LM's action logits ``[B, R, V]`` on a rollout (:func:`action_logits`): the LM head runs on the
    response positions only, the prompt's ~2/3 of a P-CoT sequence (header included) left out."""
    width, p = ro.input_ids.shape[1], ro.prompt_width
    out = lm(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=ro.position_ids,
             **_keep(lm, width - p + 1))
    return action_logits(out.logits, width, p)


def response_logprobs_values(model: nn.Module, ro, with_values: bool = True):
    """Log-probs ``[B, R]`` of the response tokens (and values ``[B, R]`` of the states they are taken in),
    and the action logits ``[B, R, V]``.

    The action emitting response token ``t`` (column ``P + t``) is taken at position ``P + t - 1``.
    ``model`` is a :class:`PolicyWithValue` (or wrapped one) when ``with_values``, else a plain causal LM.
    """
    width, p = ro.input_ids.shape[1], ro.prompt_width
    if with_values:
        logits, values = model(ro.input_ids, ro.attention_mask, ro.position_ids, logits_to_keep=width - p + 1)
        logits, values = action_logits(logits, width, p), values[:, p - 1 : -1]
    else:
        logits, values = response_logits(model, ro), None
    logp = logprobs_from_logits(logits.float(), ro.input_ids[:, p:])
    return logp, values, logits
