"""Pure math of the critic-free policy-gradient methods (GRPO, RLOO, Dr. GRPO) beside ReFT's PPO.

References:

* GRPO: Shao et al. 2024, "DeepSeekMath", section 4.1: G sampled outputs per question, advantage
  ``(r_i - mean(r)) / std(r)`` of the group given to every token of output ``i``, clipped ratio objective
  averaged per output over its tokens then over the group, KL to the reference in the loss with the
  unbiased "k3" estimator ``pi_ref/pi - log(pi_ref/pi) - 1``.
* Dr. GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training": no division by the group std and no
  division by the response length (a constant normaliser instead).
* RLOO: Ahmadian et al. 2024, "Back to Basics": REINFORCE with the leave-one-out baseline
  ``r_i - mean_{j != i} r_j``; the KL penalty in the sequence reward (``r - beta * sum_t k1_t``).
* TRL's ``GRPOTrainer`` / ``RLOOTrainer`` (documented defaults cited in conf/method/grpo.yaml, rloo.yaml):
  the std is the unbiased group std plus ``eps = 1e-4``; a group with equal rewards gets advantage 0.

Tensor conventions are those of :mod:`reft_exp.rl.ppo_core`: per-token tensors are ``[B, T]`` over response
action positions, ``mask`` is 1 on real response tokens (EOS included) and 0 on the right padding. A batch of
``B = n * G`` responses holds ``n`` groups of ``G`` adjacent rows (the G samples of one question).
Every function here is pure (no model, no optimiser, no process group).
"""

from __future__ import annotations

import torch

from reft_exp.rl.ppo_core import masked_mean

__all__ = [
    "AGGREGATIONS",
    "aggregate_loss",
    "clipped_policy_loss",
    "grouped",
    "grpo_advantages",
    "k1_kl",
    "k3_kl",
    "kl_penalised_rewards",
    "rloo_advantages",
    "truncated_rows",
    "zero_variance_groups",
]

#: Loss aggregations: ``token`` = mean over every response token of the batch (TRL ``bnpo``/``dapo``),
#: ``sequence`` = mean over each response's tokens, then over responses (DeepSeekMath's GRPO, TRL ``grpo``),
#: ``constant`` = sum over every token divided by ``B * constant`` (Dr. GRPO, TRL ``dr_grpo``).
AGGREGATIONS = ("token", "sequence", "constant")


def grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B]`` -> ``[B / G, G]`` (groups are adjacent rows). Raises ValueError when ``G`` does not divide ``B``."""
    x = x.reshape(-1)
    if group_size < 1 or x.numel() % group_size:
        raise ValueError(f"{x.numel()} rewards do not split into groups of {group_size}")
    return x.reshape(-1, group_size)


def zero_variance_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B / G]`` bool: the groups whose G scores are all equal (all right, all wrong, all partial). Their
    GRPO and RLOO advantages from the score are exactly 0: they carry no learning signal."""
    g = grouped(scores, group_size)
    return (g == g[:, :1]).all(dim=1)


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
                    ) -> torch.Tensor:
    """GRPO's group-relative advantage of each response, ``[B]``.

    ``A_i = r_i - mean_g(r)`` divided by ``std_g(r) + eps`` when ``scale == "group"`` (DeepSeekMath; TRL's
    ``scale_rewards="group"``, unbiased std, ``eps = 1e-4``), not divided when ``scale == "none"`` (Dr.
    GRPO). A group of equal rewards gets 0 (its numerator is exactly 0). ``G = 1`` gives all zeros (TRL).
    """
    if scale not in ("group", "none"):
        raise ValueError(f"scale must be 'group' or 'none', got {scale!r}")
    g = grouped(rewards, group_size).to(torch.float64)
    adv = g - g.mean(dim=1, keepdim=True)
    if scale == "group" and group_size > 1:
        adv = adv / (g.std(dim=1, keepdim=True) + eps)  # torch.std: unbiased (N - 1), as TRL
    return adv.reshape(-1).to(rewards.dtype)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO's advantage of each response, ``[B]``: ``A_i = r_i - (sum_g(r) - r_i) / (G - 1)``, the reward minus
    the mean of the group's other ``G - 1`` rewards. Equal rewards give 0. Needs ``G >= 2``."""
    if group_size < 2:
        raise ValueError(f"RLOO needs at least 2 samples per question, got {group_size}")
    g = grouped(rewards, group_size).to(torch.float64)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).reshape(-1).to(rewards.dtype)


def k1_kl(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token ``log pi(y_t) - log pi_ref(y_t)`` ("k1", ReFT's estimator), 0 on padding, ``[B, T]``."""
    return (logp - logp_ref) * mask.to(logp.dtype)


def k3_kl(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token ``exp(d) - d - 1`` with ``d = log pi_ref - log pi`` ("k3", DeepSeekMath eq. 4; >= 0, unbiased
    for KL(pi || pi_ref) under samples of pi), 0 on padding, ``[B, T]``."""
    m = mask.to(logp.dtype)
    d = (logp_ref - logp) * m
    return (torch.exp(d) - d - 1.0) * m


def kl_penalised_rewards(scores: torch.Tensor, logp_old: torch.Tensor, logp_ref: torch.Tensor,
                         mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequence reward with the KL in it (RLOO paper, TRL ``RLOOTrainer``): ``r_i = score_i - beta *
    sum_t k1_t``. ReFT puts the same per-token k1 into its per-token rewards; with a sequence-level advantage
    only its sum matters. Returns ``(rewards [B], sequence k1 [B])``."""
    seq_kl = k1_kl(logp_old, logp_ref, mask).sum(dim=-1)
    return scores.to(seq_kl.dtype) - beta * seq_kl, seq_kl


def truncated_rows(response_ids: torch.Tensor, mask: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """``[B]`` bool: responses that ran out of length before emitting EOS (their mask has no EOS in it)."""
    has_eos = ((response_ids == eos_token_id) & mask.bool()).any(dim=-1)
    return ~has_eos


def aggregate_loss(token_losses: torch.Tensor, mask: torch.Tensor, how: str, constant: float | None = None
                   ) -> torch.Tensor:
    """Reduce per-token losses ``[B, T]`` to a scalar over the masked positions.

    * ``token``: ``sum(l * m) / sum(m)`` (every token of the batch weighs the same; TRL ``bnpo``, on one
      process ``dapo``); an empty mask gives 0.
    * ``sequence``: ``mean_b( sum_t(l * m) / max(len_b, 1) )`` (DeepSeekMath GRPO, the official ReFT's PPO
      loss, train_rl_reft.py:446, 466); a fully masked row adds 0 but still counts in the mean over ``B``.
    * ``constant``: ``sum(l * m) / (B * constant)`` (Dr. GRPO; ``constant`` = the generation budget).
    """
    m = mask.to(token_losses.dtype)
    total = (token_losses * m).sum()
    if how == "token":
        return total / m.sum().clamp(min=1.0)
    if how == "sequence":
        return ((token_losses * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)).mean()
    if how == "constant":
        if not constant or constant <= 0:
            raise ValueError(f"the 'constant' aggregation needs a positive constant, got {constant!r}")
        return total / (token_losses.shape[0] * constant)
    raise ValueError(f"unknown loss aggregation {how!r}; one of {list(AGGREGATIONS)}")


def clipped_policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_eps: float, aggregation: str, constant: float | None = None,
                        kl_tokens: torch.Tensor | None = None, beta: float = 0.0
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped-ratio surrogate with one advantage per response, plus an optional per-token KL term.

    ``rho_t = exp(logp_t - logp_old_t)``, per token ``l_t = max(-A * rho_t, -A * clip(rho_t, 1 - eps, 1 + eps))
    + beta * kl_t`` (``kl_tokens``: the k3 of :func:`k3_kl` for GRPO's KL in the loss; None = no KL term), then
    :func:`aggregate_loss`. ``advantages`` is ``[B]`` (broadcast over each response's tokens). Padded
    positions have their log-ratio set to 0 before ``exp``.

    Stats (detached, over masked tokens): ``clipfrac`` (tokens where the clipped term is the larger),
    ``pg_loss`` (the surrogate alone, same aggregation), ``kl_loss`` (the KL term alone, unweighted).
    """
    m = mask.to(logp.dtype)
    ratio = torch.exp((logp - logp_old) * m)
    adv = advantages.to(logp.dtype).reshape(-1, 1)
    unclipped, clipped = -adv * ratio, -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    pg_tokens = torch.max(unclipped, clipped)
    tokens = pg_tokens if kl_tokens is None else pg_tokens + beta * kl_tokens
    loss = aggregate_loss(tokens, m, aggregation, constant)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean(torch.gt(clipped, unclipped).to(m.dtype), m) if m.sum() > 0
                 else torch.zeros(()),
                 "pg_loss": aggregate_loss(pg_tokens.detach(), m, aggregation, constant),
                 "kl_loss": (aggregate_loss(kl_tokens.detach(), m, aggregation, constant) if kl_tokens is not None
                             else torch.zeros(()))}
    return loss, stats
