"""Hand-computed checks of the ReFT PPO math in ``reft_exp.rl.ppo_core``.

Every expected number below was worked out by hand (the arithmetic is spelled out in the comments); none is
produced by the function under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from reft_exp.rl.ppo_core import (
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


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor, expected: list | float, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------------ masked stats


def test_masked_mean_and_unbiased_var() -> None:
    x = t([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 9.0]])
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0]])
    # (1+2+3+4+5)/5 = 3; deviations -2,-1,0,1,2 -> sum of squares 10; unbiased 10/4 = 2.5, biased 10/5 = 2
    close(masked_mean(x, mask), 3.0)
    close(masked_mean(x, mask, dim=1), [2.0, 4.5])
    close(masked_var(x, mask), 2.5)
    close(masked_var(x, mask, unbiased=False), 2.0)
    close(masked_var(x, mask.bool()), 2.5)


def test_masked_whiten_mean0_unbiased_var1_and_zero_padding() -> None:
    x = t([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 9.0]])
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = masked_whiten(x, mask)
    # mean 3, unbiased var 2.5 (biased 2 would give -1.41421 for x=1); (x - 3) / sqrt(2.5 + 1e-8)
    a, b = 1.2649110615375296, 0.6324555307687648
    close(out, [[-a, -b, 0.0, 0.0], [b, a, 0.0, 0.0]])
    close(masked_mean(out, mask), 0.0)
    close(masked_var(out, mask), 1.0, atol=1e-5)
    # shift_mean=False (TRL meaning) adds the mean back
    close(masked_whiten(x, mask, shift_mean=False), [[3 - a, 3 - b, 3.0, 0.0], [3 + b, 3 + a, 0.0, 0.0]])


def test_masked_whiten_needs_two_elements() -> None:
    with pytest.raises(ValueError):
        masked_whiten(t([[1.0, 2.0]]), t([[1, 0]]))


# --------------------------------------------------------------------------------------- rewards and KL


def test_kl_rewards_score_at_eos_or_last_action() -> None:
    beta = 0.05
    # row 0: finished, EOS emitted by action 2; row 1: truncated (all 5 actions real);
    # row 2: EOS emitted by the very first action.
    mask = t([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    logp_old = t([[-1.0, -0.5, -2.0, -0.3, -0.3], [-0.1, -0.2, -0.3, -0.4, -0.5], [-2.0, -1, -1, -1, -1]])
    logp_ref = t([[-1.2, -0.5, -1.0, -5.0, -5.0], [-0.3, -0.2, -0.1, -0.4, -1.5], [-1.0, -3, -3, -3, -3]])
    scores = torch.tensor([1.0, 0.1, 1.0])
    rewards, kl = kl_penalty_rewards(logp_old, logp_ref, mask, scores, beta)
    # k1 = logp_old - logp_ref on the mask, 0 on padding
    close(kl, [[0.2, 0.0, -1.0, 0.0, 0.0], [0.2, 0.0, -0.2, 0.0, 1.0], [-1.0, 0.0, 0.0, 0.0, 0.0]])
    # -0.05 * kl, plus the score on the last masked action:
    # row 0: [-0.01, 0, 0.05 + 1]; row 1: [-0.01, 0, 0.01, 0, -0.05 + 0.1]; row 2: [0.05 + 1]
    close(
        rewards,
        [[-0.01, 0.0, 1.05, 0.0, 0.0], [-0.01, 0.0, 0.01, 0.0, 0.05], [1.05, 0.0, 0.0, 0.0, 0.0]],
    )
    close(last_action_index(mask).float(), [2.0, 4.0, 0.0])
    # bool masks behave the same
    rewards_b, _ = kl_penalty_rewards(logp_old, logp_ref, mask.bool(), scores, beta)
    close(rewards_b, rewards)


# ------------------------------------------------------------------------------------------------------ GAE


def test_gae_gamma1_lambda095_batch_with_different_lengths() -> None:
    rewards = t([[0.1, -0.2, 1.0, 0.0], [0.5, 0.3, 0.0, 0.0]])
    values = t([[0.5, 0.4, 0.8, 9.9], [1.0, 2.0, 7.0, 7.0]])  # 9.9 / 7.0 sit on padding: must be ignored
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: V = [.5, .4, .8, 0]; delta = [.1+.4-.5, -.2+.8-.4, 1+0-.8] = [0, .2, .2]
    #        A2 = .2; A1 = .2 + .95*.2 = .39; A0 = 0 + .95*.39 = .3705; R = A + V = [.8705, .79, 1.0]
    # row 1: V = [1, 2, 0, 0]; delta = [.5+2-1, .3+0-2] = [1.5, -1.7]
    #        A1 = -1.7; A0 = 1.5 + .95*(-1.7) = -.115; R = [.885, .3]
    close(adv, [[0.3705, 0.39, 0.2, 0.0], [-0.115, -1.7, 0.0, 0.0]])
    close(ret, [[0.8705, 0.79, 1.0, 0.0], [0.885, 0.3, 0.0, 0.0]])
    # gamma and lambda swapped would give A0 = -.02 + .95*(.16 + .95*.2) = .3125 for row 0: not what we got
    adv_swapped, _ = gae_advantages(rewards, values, mask, gamma=0.95, lam=1.0)
    close(adv_swapped[0, :3], [0.3125, 0.35, 0.2])


def test_gae_other_gamma_lambda() -> None:
    rewards = t([[0.0, 0.0, 1.0]])
    values = t([[0.2, 0.5, 0.6]])
    mask = t([[1, 1, 1]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    # delta = [0 + .9*.5 - .2, 0 + .9*.6 - .5, 1 - .6] = [.25, .04, .4]; gamma*lam = .45
    # A2 = .4; A1 = .04 + .45*.4 = .22; A0 = .25 + .45*.22 = .349; R = A + V = [.549, .72, 1.0]
    close(adv, [[0.349, 0.22, 0.4]])
    close(ret, [[0.549, 0.72, 1.0]])


# ---------------------------------------------------------------------------------------------- policy loss


def _policy_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # ratios: row 0 [1.5, 1.5, 1.1], row 1 [0.7, pad, pad]; the padding has a huge ratio and advantage
    ratios = t([[1.5, 1.5, 1.1], [0.7, 9.0, 9.0]])
    logp_old = torch.full((2, 3), -1.0)
    logp_new = (logp_old + ratios.log()).requires_grad_(True)
    adv = t([[1.0, -2.0, 3.0], [-1.0, 5.0, 5.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    return logp_new, logp_old, adv, mask


def test_policy_loss_clipping_and_per_sequence_mean() -> None:
    logp_new, logp_old, adv, mask = _policy_case()
    loss, stats = ppo_policy_loss(logp_new, logp_old, adv, mask, clip_eps=0.2)
    # per token max(-A*r, -A*clip(r, .8, 1.2)):
    #   row 0: A=1,r=1.5 -> max(-1.5, -1.2) = -1.2 (clipped term wins)
    #          A=-2,r=1.5 -> max(3.0, 2.4) = 3.0 (out of range, but the unclipped term wins)
    #          A=3,r=1.1 -> max(-3.3, -3.3) = -3.3 (inside the range)
    #   row 1: A=-1,r=.7 -> max(.7, .8) = .8 (clipped term wins)
    # per sequence: row 0 (-1.2 + 3 - 3.3)/3 = -.5; row 1 .8/1 = .8 -> loss (-.5 + .8)/2 = .15
    # (a token-level mean would be (-1.5 + .8)/4 = -.175)
    close(loss, 0.15)
    close(stats["clipfrac"], 0.5)  # 2 of 4 response tokens
    # 0.5 * mean(log r)^2 = 0.5 * (2 ln(1.5)^2 + ln(1.1)^2 + ln(.7)^2) / 4
    close(stats["approx_kl"], 0.058138119224295196)
    close(stats["policy_kl"], -0.13739136302048033)  # mean(-log r)
    close(stats["mean_ratio"], 1.2)  # (1.5 + 1.5 + 1.1 + .7) / 4
    loss.backward()
    # d loss / d logp_new = -A * r / (len_b * B) where the unclipped term wins, else 0:
    #   row 0 token 1: 2 * 1.5 / 6 = .5; token 2: -3 * 1.1 / 6 = -.55; everything else 0
    close(logp_new.grad, [[0.0, 0.5, -0.55], [0.0, 0.0, 0.0]])


def test_policy_loss_ignores_nonfinite_padding() -> None:
    logp_new, logp_old, adv, mask = _policy_case()
    logp_new = logp_new.detach().clone()
    logp_new[1, 1:] = 1e4  # exp would overflow if padding were not masked before exp
    loss, stats = ppo_policy_loss(logp_new, logp_old, adv, mask)
    close(loss, 0.15)
    assert torch.isfinite(stats["mean_ratio"])


# ----------------------------------------------------------------------------------------------- value loss


def test_value_loss_clipping_and_per_sequence_mean() -> None:
    values_new = t([[1.0, 0.0, 5.0], [2.0, 0.5, -0.5]]).requires_grad_(True)
    values_old = t([[0.5, 0.1, 0.0], [1.0, 0.5, 0.0]])
    returns = t([[1.2, -1.0, 0.0], [3.0, 0.6, 0.0]])
    mask = t([[1, 1, 0], [1, 1, 1]])
    loss, stats = ppo_value_loss(values_new, values_old, returns, mask, clip_range=0.2)
    # row 0: v=1 clip to [.3,.7] -> .7: max((1-1.2)^2=.04, (.7-1.2)^2=.25) = .25 (clipped wins)
    #        v=0 inside [-.1,.3]: (0+1)^2 = 1 for both -> 1;  padding (5-0)^2 = 25 must be ignored
    #        mean (.25 + 1)/2 = .625
    # row 1: v=2 clip to [.8,1.2] -> 1.2: max(1, 3.24) = 3.24 (clipped wins)
    #        v=.5 inside: .01;  v=-.5 clip to [-.2,.2] -> -.2: max(.25, .04) = .25 (unclipped wins)
    #        mean (3.24 + .01 + .25)/3 = 3.5/3
    # loss = .5 * (.625 + 3.5/3)/2 = .4479166...  (token-level would be .5 * 4.75/5 = .475)
    close(loss, 0.5 * (0.625 + 3.5 / 3) / 2)
    close(stats["vf_clipfrac"], 0.4)  # 2 of 5
    close(stats["mean_vpred"], 0.6)  # (1 + 0 + 2 + .5 - .5)/5
    # R - v = [.2, -1, 1, .1, .5]: unbiased var 2.172/4 = .543; var(R) = 8.912/4 = 2.228
    close(stats["explained_var"], 1 - 0.543 / 2.228, atol=1e-5)
    loss.backward()
    # d/dv = .5 * (1/B) * (1/len_b) * 2 (v - R) where the unclipped term wins (and v is inside the range for
    # ties), else 0:  row 0 token 1: .25 * .5 * 2 = .25;  row 1 token 1: .25/3 * (-.2);  token 2: .25/3 * (-1)
    close(values_new.grad, [[0.0, 0.25, 0.0], [0.0, -0.2 / 12, -1.0 / 12]])


# ------------------------------------------------------------------------------------------- logits helpers


def _log_probs_row() -> list[float]:
    return [math.log(0.5), math.log(0.25), math.log(0.125), math.log(0.125)]


def test_logprobs_from_logits_gathers_log_softmax() -> None:
    logits = torch.tensor([[[3.0 + v for v in _log_probs_row()], [0.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    labels = torch.tensor([[2, 1]])
    lp = logprobs_from_logits(logits, labels)
    close(lp, [[-2.0794415416798357, -1.3862943611198906]])  # ln(.125), ln(.25)
    lp.sum().backward()
    # d log p_y / d z = onehot(y) - softmax(z)
    close(logits.grad[0, 0], [-0.5, -0.25, 0.875, -0.125])
    lp_bf16 = logprobs_from_logits(logits.detach().to(torch.bfloat16), labels)
    assert lp_bf16.dtype == torch.float32
    close(lp_bf16, [[-2.0794415416798357, -1.3862943611198906]], atol=3e-2)


def test_entropy_masked_mean() -> None:
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], _log_probs_row(), [10.0, 0.0, 0.0, 0.0]]])
    mask = t([[1, 1, 0]])
    # uniform over 4: ln 4; [.5,.25,.125,.125]: .5 ln2 + .25 ln4 + 2 * .125 ln8 = 1.75 ln 2; the padding is ignored
    close(entropy_from_logits(logits, mask), (1.3862943611198906 + 1.2130075659799042) / 2)


def test_gae_matches_upstream_full_row_layout() -> None:
    """Upstream runs GAE on whole prompt+response rows; shifting by prompt_len - 1 must give our numbers."""
    gen = torch.Generator().manual_seed(0)
    prompt_len, width, lengths = 4, 6, [6, 2, 4]
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()
    rewards = torch.randn(3, width, generator=gen) * mask
    values = torch.randn(3, width, generator=gen)
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95)

    seq_len = (
        prompt_len + width
    )  # prompt tokens + generated tokens; actions live at columns prompt_len-1 .. -2
    for b in range(3):
        m_full = [0.0] * seq_len
        r_full = [0.0] * seq_len
        v_full = [0.0] * seq_len
        for k in range(width):
            m_full[prompt_len - 1 + k] = float(mask[b, k])
            r_full[prompt_len - 1 + k] = float(rewards[b, k])
            v_full[prompt_len - 1 + k] = float(values[b, k]) * float(mask[b, k])
        delta = [r_full[i] + 1.0 * v_full[i + 1] - v_full[i] for i in range(seq_len - 1)]
        a_full = [0.0] * seq_len
        running = 0.0
        for i in range(seq_len - 2, -1, -1):
            running = delta[i] + 0.95 * running
            a_full[i] = running if i >= prompt_len - 1 else 0.0
        for k in range(width):
            i = prompt_len - 1 + k
            assert adv[b, k].item() == pytest.approx(a_full[i] * m_full[i], abs=1e-5)
            assert ret[b, k].item() == pytest.approx((a_full[i] + v_full[i]) * m_full[i], abs=1e-5)
