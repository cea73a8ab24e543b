"""One PPO update on a constructed, scored rollout moves the policy the right way (tiny random model).

The tiny-scale finding behind ``lam: 1.0`` in conf/model_method/tiny_reft.yaml (docs/reft.md): with a fresh
value head, GAE with lambda 0.95 carries the end-of-answer reward back only as 0.95^distance, so after
whitening the early tokens of rewarded answers get negative advantages; with lambda 1 an update raises the
rewarded answers and lowers the others."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from reft_exp.config import ReFTConfig, TinyModelConfig
from reft_exp.methods.reft import ppo_update
from reft_exp.models import build_tiny_model, load_causal_lm
from reft_exp.rl.policy import PolicyWithValue, response_logprobs_values
from reft_exp.rl.rollout import Rollout

CFG = TinyModelConfig(name="tiny", kind="tiny")
B, PROMPT, RESPONSE = 16, 6, 48


def _rollout(vocab: int) -> Rollout:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (B, PROMPT + RESPONSE), generator=g)
    ids[:, -1] = CFG.eos_token_id
    ro = Rollout(records=[{}] * B, completions=[""] * B, input_ids=ids,
                 attention_mask=torch.ones_like(ids), response_mask=torch.ones(B, RESPONSE), prompt_width=PROMPT)
    ro.scores = torch.tensor([1.0, 0.0] * (B // 2))  # every other answer is right
    return ro


def _seq_logp_change(folder, lam: float) -> tuple[float, float]:
    torch.manual_seed(0)  # the fresh value head
    lm, value_lm, ref = (load_causal_lm(folder, CFG) for _ in range(3))
    policy = PolicyWithValue(lm, value_lm)
    rc = ReFTConfig(lam=lam, lr=1e-4, ppo_epochs=1, critic_shared=False, kl_coef=0.05)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=rc.lr)
    ro = _rollout(lm.config.vocab_size)
    with torch.no_grad():
        before = response_logprobs_values(ref, ro, with_values=False)[0].sum(-1)
    ppo_update(Accelerator(cpu=True), rc, policy, ref.eval(), optimizer, ro)
    with torch.no_grad():
        after = response_logprobs_values(policy, ro, with_values=True)[0].sum(-1)
    delta = after - before
    right = ro.scores == 1
    return delta[right].mean().item(), delta[~right].mean().item()


def test_one_update_raises_rewarded_answers_and_lowers_the_others(tmp_path):
    build_tiny_model(tmp_path, ["Tom has 3 apples. He buys 2 more, so 3 + 2 = 5."] * 4, CFG)
    right, wrong = _seq_logp_change(tmp_path, lam=1.0)
    right_095, wrong_095 = _seq_logp_change(tmp_path, lam=0.95)
    print(f"lambda 1: right {right:+.3f} wrong {wrong:+.3f}; lambda 0.95: right {right_095:+.3f} "
          f"wrong {wrong_095:+.3f}")
    assert right > 0 > wrong
    # lambda 0.95 with a fresh critic: the rewarded answers gain less (the finding above)
    assert right_095 < right


def test_zero_value_head_starts_at_zero_and_then_learns(tmp_path):
    """``value_head_init: zero``: V is exactly 0 on every state of the first rollout (so with lambda 1 the first
    advantages are the returns alone), and one update moves it off zero; the default head is random."""
    build_tiny_model(tmp_path, ["Tom has 3 apples. He buys 2 more, so 3 + 2 = 5."] * 4, CFG)
    torch.manual_seed(0)
    lm, value_lm, ref = (load_causal_lm(tmp_path, CFG) for _ in range(3))
    ro = _rollout(lm.config.vocab_size)
    zero = PolicyWithValue(lm, value_lm, zero_head=True)
    with torch.no_grad():
        values = response_logprobs_values(zero, ro, with_values=True)[1]
        default_values = response_logprobs_values(PolicyWithValue(lm, value_lm), ro, with_values=True)[1]
    assert values.abs().max().item() == 0.0
    assert default_values.std().item() > 0.01
    rc = ReFTConfig(lam=1.0, lr=1e-3, ppo_epochs=1, critic_shared=False, value_head_init="zero")
    ppo_update(Accelerator(cpu=True), rc, zero, ref.eval(), torch.optim.AdamW(zero.parameters(), lr=rc.lr), ro)
    with torch.no_grad():
        assert response_logprobs_values(zero, ro, with_values=True)[1].abs().max().item() > 0
    with pytest.raises(ValueError, match="value_head_init"):
        ReFTConfig(value_head_init="xavier")


def _updated(folder, critic_shared: bool, reuse: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    torch.manual_seed(0)  # the same fresh value head in both runs
    lm, value_lm, ref = (load_causal_lm(folder, CFG) for _ in range(3))
    policy = PolicyWithValue(lm, None if critic_shared else value_lm)
    rc = ReFTConfig(lam=1.0, lr=1e-3, ppo_epochs=2, critic_shared=critic_shared, kl_coef=0.05)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=rc.lr)
    stats = ppo_update(Accelerator(cpu=True), rc, policy, ref.eval(), optimizer, _rollout(lm.config.vocab_size),
                       reuse_first_forward=reuse)
    return stats, {k: v.detach().clone() for k, v in policy.state_dict().items()}


def test_reusing_the_first_epoch_forward_changes_nothing_without_dropout(tmp_path):
    """Without dropout, the first PPO epoch's forward (train mode) is the rollout's old log-probs / values pass
    (eval mode): reusing it gives the same update as computing it apart, shared critic or separate."""
    from transformers import LlamaConfig, OPTConfig, OPTForCausalLM

    from reft_exp.rl.policy import disable_dropout, has_dropout

    build_tiny_model(tmp_path, ["Tom has 3 apples. He buys 2 more, so 3 + 2 = 5."] * 4, CFG)
    lm = load_causal_lm(tmp_path, CFG)
    assert not has_dropout(lm) and not has_dropout(PolicyWithValue(lm, None))
    lm.config.attention_dropout = 0.1  # applied functionally by the attention: no nn.Dropout module to see
    assert has_dropout(PolicyWithValue(lm, None))
    opt = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                   num_attention_heads=2, max_position_embeddings=32, word_embed_proj_dim=16))
    assert has_dropout(opt)  # Galactica's family: dropout 0.1 by default (the official code keeps it)
    ids = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    opt.train()
    assert not torch.equal(opt(ids).logits, opt(ids).logits)  # OPT's dropout is functional: no nn.Dropout
    disable_dropout(opt)  # ... so disable_dropout must zero the layers' rates too
    assert torch.equal(opt(ids).logits, opt.eval()(ids).logits)
    assert has_dropout(opt) and opt.config.dropout == 0.1  # the config keeps its saved rate: still counted
    assert not has_dropout(torch.nn.Sequential(torch.nn.Dropout(0.0))) and has_dropout(torch.nn.Dropout(0.1))
    assert LlamaConfig().attention_dropout == 0.0  # CodeLlama and the tiny model: the pass is reused
    for shared in (True, False):
        (s1, w1), (s0, w0) = _updated(tmp_path, shared, True), _updated(tmp_path, shared, False)
        for k in w0:
            torch.testing.assert_close(w1[k], w0[k], rtol=1e-5, atol=1e-6, msg=k)
        assert s1["kl"] == pytest.approx(s0["kl"], abs=1e-6) and s1["pg_loss"] == pytest.approx(s0["pg_loss"], abs=1e-5)


@pytest.mark.parametrize("critic_shared", [True, False])
def test_the_lm_head_on_response_positions_gives_the_log_probs_and_values_of_every_position(tmp_path, critic_shared):
    """response_logprobs_values runs the LM head on the response positions only (logits_to_keep); the numbers
    are those of a forward over every position, sliced at the response's actions."""
    from reft_exp.rl.ppo_core import logprobs_from_logits

    build_tiny_model(tmp_path, ["Tom has 3 apples. He buys 2 more, so 3 + 2 = 5."] * 4, CFG)
    torch.manual_seed(0)
    lm = load_causal_lm(tmp_path, CFG)
    policy = PolicyWithValue(lm, None if critic_shared else load_causal_lm(tmp_path, CFG))
    ro = _rollout(lm.config.vocab_size)
    ro.attention_mask[: B // 2, :2] = 0  # left padding on half of the prompts
    logp, values, logits = response_logprobs_values(policy, ro)
    full_logits, full_values = policy(ro.input_ids, ro.attention_mask, ro.position_ids)  # every position
    assert full_logits.shape[1] == PROMPT + RESPONSE and logits.shape[1] == RESPONSE
    assert torch.allclose(logits, full_logits[:, PROMPT - 1 : -1], atol=1e-6)
    assert torch.allclose(values, full_values[:, PROMPT - 1 : -1], atol=1e-6)
    assert torch.allclose(logp, logprobs_from_logits(full_logits[:, PROMPT - 1 : -1], ro.input_ids[:, PROMPT:]),
                          atol=1e-6)
    ref_logp = response_logprobs_values(lm, ro, with_values=False)[0]  # a plain LM (the reference's path)
    assert torch.allclose(ref_logp, logp, atol=1e-6)


def _opt_update(mode: str) -> dict[str, torch.Tensor]:
    """The weights after one ReFT PPO update (2 PPO epochs) of a one-layer OPT policy (Galactica's family: dropout
    0.1) with a shared critic. ``mode``: "official" = every forward in eval mode, as train_rl_reft.py (rollout
    under model.eval() at :275 / :409, the PPO forward under model.eval() at :455); "disabled" = ReFT's
    ``disable_dropout`` applied and the first PPO epoch's forward reused, as ReFTTask does; "dropout" = updates
    in train mode with the model's dropout."""
    from transformers import OPTConfig, OPTForCausalLM

    from reft_exp.rl.policy import disable_dropout

    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                    max_position_embeddings=64, word_embed_proj_dim=16)
    lm, ref = OPTForCausalLM(cfg), OPTForCausalLM(cfg)
    ref.load_state_dict(lm.state_dict())
    if mode == "disabled":
        disable_dropout(lm)
    policy = PolicyWithValue(lm, None)
    if mode == "official":
        policy.eval()
        policy.train = lambda mode=True: policy  # ppo_update's train() / eval() leave it in eval mode
    rc = ReFTConfig(lam=1.0, lr=1e-3, ppo_epochs=2, critic_shared=True, kl_coef=0.05)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=rc.lr)
    torch.manual_seed(1)  # the dropout masks of the "dropout" run
    ppo_update(Accelerator(cpu=True), rc, policy, ref.eval(), optimizer, _rollout(cfg.vocab_size),
               reuse_first_forward=mode == "disabled")
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


def test_reft_default_update_is_the_official_eval_mode_update_on_a_model_with_dropout():
    """The official PPO update runs the policy in eval mode (train_rl_reft.py:455), so Galactica's dropout never
    applies; ReFT's default ``disable_dropout: true`` gives that update (and lets the first PPO epoch's forward
    stand in for the old log-probs pass), while updating in train mode with the model's dropout does not."""
    from reft_exp.config import load_run_config

    assert ReFTConfig().disable_dropout is True
    galactica = load_run_config(["model=galactica-6.7b", "dataset=gsm8k", "cot=n", "method=reft"]).method
    assert galactica.disable_dropout is True
    official, ours, with_dropout = (_opt_update(m) for m in ("official", "disabled", "dropout"))
    for k in official:
        torch.testing.assert_close(ours[k], official[k], rtol=1e-5, atol=1e-6, msg=k)
    moved = max((with_dropout[k] - official[k]).abs().max().item() for k in official)
    assert moved > 1e-4, "train-mode dropout changes the update (the point of the default)"
