"""Reinforcement-learning stage of ReFT (PPO with a correctness reward)."""

from reft_exp.rl.ppo_core import (
    WHITEN_EPS,
    entropy_from_logits,
    gae_advantages,
    kl_penalty_rewards,
    last_action_index,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)

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
