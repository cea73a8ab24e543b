"""Pure PPO math of ReFT (Luong et al., ACL 2024), matching the official code.

Reference: ``lqtrung1998/mwp_ReFT`` ``train_rl_reft.py`` (functions ``rollout`` and ``train_one_epoch``) and
``src/utils.py`` (``allgather_masked_whiten``, ``discount_cumsum``), which build on TRL 0.7's ``trl/core.py``
(``masked_mean``, ``masked_var``, ``masked_whiten``, ``logprobs_from_logits``, ``entropy_from_logits``) and
borrow the loss shapes of TRL 0.7's ``PPOTrainer.loss``.

Tensor conventions (shared with the training loop):

* every per-token tensor is ``[B, T]`` over *response action positions*: column ``t`` is the action that emits
  the ``t``-th generated token, so ``logp[b, t] = log pi(y_t | x, y_<t)`` and ``values[b, t] = V(x, y_<t)``
  (the value head read on the hidden state at which action ``t`` is taken);
* ``mask[b, t]`` is 1 on real response tokens, including the EOS token when one was emitted, and 0 on the
  right padding after the response.  Masks are right-padded prefixes of ones;
* ``scores`` ``[B]`` is the correctness reward (1 correct, 0.1 extracted but wrong, 0 nothing extracted).

The official code works on full ``prompt + response`` rows with ``mask[:, prompt_len - 1:-1] = 1``
(train_rl_reft.py:332-334); shifting its columns left by ``prompt_len - 1`` gives exactly the action-space
layout used here (the prompt columns carry no mask, zero values and zero rewards there,
train_rl_reft.py:356, 371, so dropping them changes nothing).

Every function here is pure (no optimiser, no model); only :func:`masked_whiten` talks to other processes, and
only when it is given a multi-process ``accelerate.Accelerator``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "WHITEN_EPS",
    "entropy_from_logits",
    "gae_advantages",
    "kl_penalty_rewards",
    "last_action_index",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "ppo_value_loss",
]

#: ``eps`` inside ``rsqrt(var + eps)`` of the advantage whitening (official ``allgather_masked_whiten``,
#: src/utils.py:103; TRL).
WHITEN_EPS = 1e-8


def _as_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Return ``mask`` as a tensor of ``like``'s dtype and device (accepts bool or float masks)."""
    return mask.to(device=like.device, dtype=like.dtype)


# ---------------------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1.

    ``sum(x * mask) / sum(mask)``, over all elements when ``dim`` is None, else along ``dim`` (TRL 0.7
    ``masked_mean``).  An all-zero mask gives NaN, as in the official code (TRL's ``masked_mean``,
    imported at train_rl_reft.py:32).
    """
    m = _as_mask(mask, x)
    if dim is None:
        return (x * m).sum() / m.sum()
    return (x * m).sum(dim=dim) / m.sum(dim=dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the masked positions (all of them, one scalar).

    ``var = sum(mask * (x - mean)^2) / N`` with ``N = sum(mask)``, times the Bessel correction ``N / (N - 1)``
    when ``unbiased`` (TRL 0.7 ``masked_var``, whose default ``unbiased=True`` is what the official code
    uses, src/utils.py:102).

    Raises:
        ValueError: if ``unbiased`` and the mask is empty.
    """
    m = _as_mask(mask, x)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    if unbiased:
        n = m.sum()
        if n == 0:
            raise ValueError("masked_var: the mask is empty")
        var = var * (n / (n - 1))
    return var


def _sum_across_processes(t: torch.Tensor, accelerator: Any | None) -> torch.Tensor:
    """Sum ``t`` over all processes of ``accelerator`` (identity for None or a single process)."""
    if accelerator is None or getattr(accelerator, "num_processes", 1) <= 1:
        return t
    return accelerator.reduce(t.contiguous(), reduction="sum")


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    accelerator: Any | None = None,
    eps: float = WHITEN_EPS,
) -> torch.Tensor:
    """Whiten ``x`` with the mean and unbiased variance of its masked entries over the GLOBAL batch.

    ``out = (x - mu) * rsqrt(var + eps)`` with ``mu = sum(mask*x) / N``,
    ``var = sum(mask*(x - mu)^2) / (N - 1)`` and ``N = sum(mask)``, where the sums run over every process of
    ``accelerator`` (when it has ``num_processes > 1``): each process reduces its local sums and counts, so
    the result is the same as one process whitening the concatenated batch.  Processes may hold different
    numbers of rows and different padded widths (the official code all-gathers whole tensors instead,
    src/utils.py:95-98, which needs ``pad_across_processes`` first, train_rl_reft.py:291; the statistics are
    identical).

    ``shift_mean`` follows TRL's meaning: True (the default) leaves the output with mean 0; False adds ``mu``
    back.  The official ReFT call ``allgather_masked_whiten(adv, mask)`` (train_rl_reft.py:421) uses its own
    flag with the *opposite* name (``shift_mean=False`` there = mean removed, src/utils.py:84, 103-105), i.e.
    it is this function with ``shift_mean=True``.

    Padding: the official code leaves ``(0 - mu) * rsqrt(var + eps)`` in padded positions (src/utils.py:103;
    harmless, every loss masks them); here padded positions are set to 0 so the output can be summed or
    logged without a mask.

    Statistics are accumulated in float64 and the result is cast back to ``x.dtype``.
    """
    m = _as_mask(mask, x).to(torch.float64)
    xd = x.detach().to(torch.float64)
    total = _sum_across_processes(torch.stack([(xd * m).sum(), m.sum()]), accelerator)
    s, n = total[0], total[1]
    if n < 2:
        raise ValueError(f"masked_whiten needs at least 2 masked elements over all processes, got {int(n)}")
    mu = s / n
    sq = _sum_across_processes(((xd - mu) ** 2 * m).sum().reshape(1), accelerator)[0]
    var = sq / (n - 1)
    scale = torch.rsqrt(var + eps)
    out = (x.to(torch.float64) - mu) * scale
    if not shift_mean:
        out = out + mu
    return (out * m).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------
# Rewards, advantages, returns (rollout side; no gradients)
# ---------------------------------------------------------------------------------------------------------


def last_action_index(mask: torch.Tensor) -> torch.Tensor:
    """Index ``[B]`` of the last position where ``mask`` is 1 (the EOS action, or the last one if truncated).

    Rows with an empty mask give 0.
    """
    m = mask.to(torch.long)
    positions = torch.arange(m.shape[-1], device=m.device).expand_as(m)
    return (positions * m).amax(dim=-1)


def kl_penalty_rewards(
    logp_old: torch.Tensor,
    logp_ref: torch.Tensor,
    mask: torch.Tensor,
    scores: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ReFT rewards: a k1 KL penalty on every response token plus the score on the last one.

    ``kl_t = (logp_old_t - logp_ref_t) * mask_t`` (log-ratio of the *sampled* token, "k1"), and
    ``r_t = -beta * kl_t + scores * [t == last masked position]``, 0 on padding.

    The last masked position is the action that emits EOS for a finished response, or the last generated
    action for a truncated one.  The official ``rollout`` (train_rl_reft.py:335-353):
    ``score_rew[:, -2] = correctness`` (last action of a truncated row), overwritten by
    ``score_rew[b, eos_idx - 1]`` (the action whose label is EOS) when EOS is present;
    ``kl = (old_logprob - ref_logprob) * mask``; ``rew = score_rew + kl_coef * (-kl)``.
    Rows with an empty mask get no reward at all.

    Args:
        logp_old: ``[B, T]`` log-probs of the sampled tokens under the rollout (behaviour) policy.
        logp_ref: ``[B, T]`` log-probs of the same tokens under the frozen reference (warm-up) policy.
        mask: ``[B, T]`` response mask.
        scores: ``[B]`` correctness rewards.
        beta: KL coefficient (official: 0.05 N-CoT, 0.01 P-CoT and MathQA-numeric N-CoT;
            exps/paper_exps/ReFT/gsm8k.sh:38, 12, exps/paper_exps/ReFT/mathqa-numeric.sh:12).

    Returns:
        ``(rewards, kl)``, both ``[B, T]`` with zeros on padding; ``kl`` is the per-token k1 for logging
        (``kl.sum(-1)`` is the official ``seq_kl``, train_rl_reft.py:519-522).
    """
    m = _as_mask(mask, logp_old)
    kl = (logp_old - logp_ref) * m
    rewards = -beta * kl
    scores = torch.as_tensor(scores, dtype=rewards.dtype, device=rewards.device).reshape(-1)
    score_rew = torch.zeros_like(rewards)
    score_rew.scatter_(1, last_action_index(mask).unsqueeze(1), scores.unsqueeze(1))
    rewards = (rewards + score_rew) * m
    return rewards, kl


@torch.no_grad()
def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each response, with values zero outside it.

    With ``V_t = values_t * mask_t`` and ``V_T = 0``::

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}       (A_T = 0)
        R_t     = A_t + V_t

    and both ``A`` and ``R`` are zeroed on padding.  Because ``V`` is 0 after the last response action, the
    last action bootstraps from 0 (truncated responses are treated as terminal too, as the official code:
    train_rl_reft.py:334, 356, 363).

    The official ``rollout`` (train_rl_reft.py:356-377): ``val = val * mask``;
    ``delta = -val[:-1] + rew[:-1] + gamma * val[1:]``; ``adv = discount_cumsum(delta, gamma * lam)`` (scipy
    ``lfilter``, float64); ``ret = adv + val``; then ``* mask``.  Its defaults are ``gamma = 1.0`` (discount)
    and ``lam = 0.95`` (GAE lambda, exps/paper_exps/ReFT/_template.sh:30-31); the paper's text swaps the two
    names.  Computed in float64 and cast back to ``rewards.dtype``, as the official code
    (train_rl_reft.py:360-366, 371-377).

    Returns:
        ``(advantages, returns)``, both ``[B, T]``.
    """
    m = _as_mask(mask, rewards).to(torch.float64)
    r = rewards.to(torch.float64) * m
    v = values.to(torch.float64) * m
    steps = r.shape[-1]
    adv = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])
    next_adv = torch.zeros_like(r[:, 0])
    for t in range(steps - 1, -1, -1):
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_adv = delta + gamma * lam * next_adv
        adv[:, t] = next_adv
        next_value = v[:, t]
    adv = adv * m
    returns = (adv + v) * m
    return adv.to(rewards.dtype), returns.to(rewards.dtype)


# ---------------------------------------------------------------------------------------------------------
# Losses (training side)
# ---------------------------------------------------------------------------------------------------------


def _per_sequence_then_batch_mean(token_losses: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``mean_b( sum_t(loss * mask) / max(sum_t mask, 1) )``: the official averaging of both PPO losses
    (train_rl_reft.py:446, 466, 474)."""
    lengths = m.sum(dim=-1).clamp(min=1.0)
    return ((token_losses * m).sum(dim=-1) / lengths).mean()


def ppo_policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate loss, averaged per sequence over response tokens, then over the batch.

    ``rho_t = exp(logp_new_t - logp_old_t)`` and per token
    ``l_t = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps))``;
    ``loss = mean_b( sum_t(l_t * mask_t) / max(len_b, 1) )`` with ``len_b = sum_t mask_t``.

    The official ``train_one_epoch`` (train_rl_reft.py:446, 463-466):
    ``pg_loss = ((max(pg_losses, pg_losses2) * mask).sum(-1) / resp_len_per_sample).mean()`` with
    ``resp_len_per_sample = clamp(mask.sum(1), min=1)``; eps is hard-coded 0.2.  Padded positions have their
    log-ratio set to 0 before ``exp`` so no NaN/inf can leak from them.

    Stats (detached; TRL 0.7 definitions, token-level over all masked tokens; the official code logs only
    ``mean_ratio`` of these, train_rl_reft.py:605): ``clipfrac`` = fraction of tokens where the clipped term
    is the larger one, ``approx_kl = 0.5 * mean((logp_new - logp_old)^2)``,
    ``policy_kl = mean(logp_old - logp_new)``, ``mean_ratio``.

    Returns:
        ``(loss, stats)``.
    """
    m = _as_mask(mask, logp_new)
    log_ratio = (logp_new - logp_old) * m
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    token_losses = torch.max(pg_losses, pg_losses_clipped)
    loss = _per_sequence_then_batch_mean(token_losses, m)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean(torch.gt(pg_losses_clipped, pg_losses).to(m.dtype), m),
            "approx_kl": 0.5 * masked_mean(log_ratio**2, m),
            "policy_kl": masked_mean(-log_ratio, m),
            "mean_ratio": masked_mean(ratio, m),
        }
    return loss, stats


def ppo_value_loss(
    values_new: torch.Tensor,
    values_old: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss, averaged per sequence over response tokens, then over the batch.

    ``v_clip = clip(v_new, v_old - c, v_old + c)`` and per token
    ``l_t = max((v_new - R)^2, (v_clip - R)^2)``; ``loss = 0.5 * mean_b( sum_t(l_t * mask_t) / max(len_b, 1) )``.

    The official ``train_one_epoch`` (train_rl_reft.py:471-478; ``vf_coef``:
    exps/paper_exps/ReFT/_template.sh:28): ``vpredclipped = max(min(vpreds, val + 0.2), val - 0.2)``;
    ``vf_loss = 0.5 * ((max(vf_losses1, vf_losses2) * mask).sum(-1) / resp_len_per_sample).mean()``;
    total loss ``pg_loss + vf_coef * vf_loss`` with ``vf_coef = 5``.

    Stats (detached): ``vf_clipfrac`` (TRL 0.7: fraction of masked tokens where the clipped term is larger),
    ``mean_vpred``, ``mean_return`` and ``explained_var = max(-1, 1 - var(R - v_new) / (var(R) + 1e-8))``
    (the official ``vf_expl_var``, train_rl_reft.py:502-505, unbiased masked variances over this batch).

    Returns:
        ``(loss, stats)``.
    """
    m = _as_mask(mask, values_new)
    v_clipped = torch.max(torch.min(values_new, values_old + clip_range), values_old - clip_range)
    vf_losses = (values_new - returns) ** 2
    vf_losses_clipped = (v_clipped - returns) ** 2
    token_losses = torch.max(vf_losses, vf_losses_clipped)
    loss = 0.5 * _per_sequence_then_batch_mean(token_losses, m)
    with torch.no_grad():
        v = values_new.detach()
        stats: dict[str, torch.Tensor] = {
            "vf_clipfrac": masked_mean(torch.gt(vf_losses_clipped, vf_losses).to(m.dtype), m),
            "mean_vpred": masked_mean(v, m),
            "mean_return": masked_mean(returns, m),
        }
        if m.sum() > 1:
            expl = 1.0 - masked_var(returns - v, m) / (masked_var(returns, m) + 1e-8)
            stats["explained_var"] = torch.clamp(expl, min=-1.0)
    return loss, stats


# ---------------------------------------------------------------------------------------------------------
# Logits helpers
# ---------------------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., label]`` without materialising the full ``[B, T, V]`` log-softmax.

    For float32/float64 logits this is ``logits.gather(label) - logsumexp(logits)`` (the autograd graph keeps
    only ``[B, T]`` extras).  Half-precision logits are upcast to float32 one row at a time, so the peak extra
    memory is one ``[T, V]`` float32 row rather than the whole batch.  Same values as TRL 0.7
    ``logprobs_from_logits`` (``gather(log_softmax(logits, -1), labels)``) used by the official code
    (train_rl_reft.py:32, 457).

    Args:
        logits: ``[..., V]``; for the policy, ``lm_logits[:, :-1]`` aligned with ``labels = input_ids[:, 1:]``.
        labels: ``[...]`` integer token ids.

    Returns:
        ``[...]`` float log-probs (float32 for half-precision input).
    """
    labels = labels.to(torch.long).unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        return logits.gather(-1, labels).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    if logits.dim() < 2:
        return F.log_softmax(logits.float(), dim=-1).gather(-1, labels).squeeze(-1)
    rows = [
        F.log_softmax(row.float(), dim=-1).gather(-1, lab).squeeze(-1)
        for row, lab in zip(logits, labels, strict=True)
    ]
    return torch.stack(rows)


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-token entropy of ``softmax(logits)`` over the masked positions (a detached logging stat).

    ``H_t = logsumexp(z_t) - sum_v softmax(z_t)_v * z_{t,v}`` (TRL 0.7 ``entropy_from_logits``), then
    ``masked_mean(H, mask)``.  Computed one row at a time in float32 to bound memory.  The official ReFT
    neither logs nor optimises entropy (its loss and logs: train_rl_reft.py:478, 583-619); it is provided
    for monitoring only.

    Args:
        logits: ``[B, T, V]`` logits at the response action positions.
        mask: ``[B, T]``.
    """
    ent = torch.stack(
        [
            torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(dim=-1)
            for z in (r.float() for r in logits)
        ]
    )
    return masked_mean(ent, mask)
