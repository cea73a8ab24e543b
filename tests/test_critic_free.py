"""Hand-computed checks of the critic-free math (GRPO, RLOO, Dr. GRPO) in ``reft_exp.rl.critic_free``, and of
the GRPO / RLOO configs.

Every expected number below was worked out by hand (the arithmetic is spelled out in the comments); none is
produced by the function under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from test_ppo_core import close, t  # the hand-computed test helpers, shared

from reft_exp.config import CONF_DIR, ConfigError, GRPOConfig, RLOOConfig, load_run_config
from reft_exp.rl.critic_free import (
    aggregate_loss,
    clipped_policy_loss,
    grouped,
    grpo_advantages,
    k1_kl,
    k3_kl,
    kl_penalised_rewards,
    rloo_advantages,
    truncated_rows,
    zero_variance_groups,
)

pytestmark = pytest.mark.seconds(23)  # its measured time in `make test`: orders the collection (conftest)

# Three groups of G = 4 (a question's samples are adjacent rows): mixed rewards (1 correct, 0.1 extracted but
# wrong, 0 nothing extracted), all correct, and a tie of two right / two wrong.
SCORES = t([1.0, 0.0, 0.1, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------------------ advantages


def test_grpo_advantages_group_scaled_by_hand() -> None:
    # group 1: mean 2.1 / 4 = 0.525; deviations .475 -.525 -.425 .475; squares .225625 .275625 .180625 .225625
    # sum .9075, unbiased var .9075 / 3 = .3025, std .55; + eps 1e-4 = .5501
    # group 2 (all 1): deviations all 0 -> advantage 0 (not 0/0)
    # group 3 (0 0 1 1): mean .5, deviations -+.5, var 4 * .25 / 3 = 1/3, std 1/sqrt(3) = .577350
    s3 = 1 / math.sqrt(3) + 1e-4
    expected = [0.475 / 0.5501, -0.525 / 0.5501, -0.425 / 0.5501, 0.475 / 0.5501, 0, 0, 0, 0,
                -0.5 / s3, -0.5 / s3, 0.5 / s3, 0.5 / s3]
    close(grpo_advantages(SCORES, 4), expected, atol=1e-5)
    # Dr. GRPO: no std scaling
    close(grpo_advantages(SCORES, 4, scale="none"),
          [0.475, -0.525, -0.425, 0.475, 0, 0, 0, 0, -0.5, -0.5, 0.5, 0.5], atol=1e-6)
    # another eps changes only the scaled groups: .475 / (.55 + .05) = .791667
    close(grpo_advantages(SCORES, 4, eps=0.05)[:1], [0.475 / 0.6], atol=1e-6)


def test_grpo_advantages_depend_on_the_grouping() -> None:
    # the same 4 rewards as two groups of 2: (1, 0) -> mean .5, unbiased std sqrt(.5) = .707107; (.1, 1) ->
    # mean .55, deviations -+.45, std sqrt(2 * .2025) = .636396
    a, b = 0.5 / (math.sqrt(0.5) + 1e-4), 0.45 / (math.sqrt(0.405) + 1e-4)
    close(grpo_advantages(SCORES[:4], 2), [a, -a, -b, b], atol=1e-5)
    # G = 1: nothing to compare with, every advantage 0 (TRL)
    close(grpo_advantages(SCORES[:4], 1), [0.0, 0.0, 0.0, 0.0])


def test_rloo_advantages_leave_one_out_by_hand() -> None:
    # group 1: sum 2.1; baselines (2.1 - r_i) / 3 = 1.1/3, 2.1/3, 2.0/3, 1.1/3
    # -> 1 - .366667 = .633333, 0 - .7 = -.7, .1 - .666667 = -.566667, .633333  (= 4/3 * (r - mean))
    # group 2: 1 - 3/3 = 0 each; group 3: 0 - 2/3, 0 - 2/3, 1 - 1/3, 1 - 1/3
    expected = [1 - 1.1 / 3, -0.7, 0.1 - 2.0 / 3, 1 - 1.1 / 3, 0, 0, 0, 0, -2 / 3, -2 / 3, 2 / 3, 2 / 3]
    close(rloo_advantages(SCORES, 4), expected, atol=1e-6)
    # G = 2: the baseline is the other sample: (1, 0) -> (1, -1); (.1, .1) -> (0, 0)
    close(rloo_advantages(t([1.0, 0.0, 0.1, 0.1]), 2), [1.0, -1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(SCORES, 1)


def test_zero_variance_groups_are_the_all_equal_ones() -> None:
    assert zero_variance_groups(SCORES, 4).tolist() == [False, True, False]
    # all wrong, mixed, all partial
    assert zero_variance_groups(t([0.0, 0.0, 1.0, 0.1, 0.1, 0.1]), 2).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        grouped(t([1.0, 0.0, 1.0, 0.0, 1.0]), 4)


# ------------------------------------------------------------------------------------------------------ KL


def test_k1_k3_and_the_kl_penalised_sequence_reward() -> None:
    logp = t([[-1.0, -2.0, -3.0], [-1.0, -1.0, 9.0]])
    ref = t([[-1.0, -2.0 + math.log(2), -3.0 - math.log(2)], [-3.0, -1.0, -9.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])  # row 1: the last column is padding (its numbers must not count)
    # k1 = logp - ref: row 0: 0, -ln 2, ln 2; row 1: 2, 0, (pad) 0
    close(k1_kl(logp, ref, mask), [[0.0, -math.log(2), math.log(2)], [2.0, 0.0, 0.0]])
    # k3 = exp(d) - d - 1, d = ref - logp: d = 0 -> 0; d = ln 2 -> 2 - ln 2 - 1 = .306853;
    # d = -ln 2 -> .5 + ln 2 - 1 = .193147; d = -2 -> e^-2 + 2 - 1 = 1.135335
    close(k3_kl(logp, ref, mask), [[0.0, 1 - math.log(2), math.log(2) - 0.5], [math.exp(-2) + 1, 0.0, 0.0]])
    # sequence reward with beta .1: row 0: 1 - .1 * 0 = 1; row 1: 0 - .1 * 2 = -.2
    rewards, seq_kl = kl_penalised_rewards(t([1.0, 0.0]), logp, ref, mask, beta=0.1)
    close(seq_kl, [0.0, 2.0], atol=1e-6)
    close(rewards, [1.0, -0.2], atol=1e-6)


# -------------------------------------------------------------------------------------------- aggregation


# two responses: row 0 has 3 tokens (the 4th column is padding, its loss 4 must never count), row 1 has 1
LOSSES = t([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]])
MASK = t([[1, 1, 1, 0], [1, 0, 0, 0]])


def test_aggregate_loss_per_token_per_sequence_and_constant() -> None:
    close(aggregate_loss(LOSSES, MASK, "token"), (1 + 2 + 3 + 5) / 4)  # 2.75
    close(aggregate_loss(LOSSES, MASK, "sequence"), (6 / 3 + 5 / 1) / 2)  # 3.5
    close(aggregate_loss(LOSSES, MASK, "constant", constant=10), 11 / (2 * 10))  # .55
    # a fully masked row (a truncated response under mask_truncated) adds 0; it still counts in B for
    # 'sequence' and 'constant', not in 'token' (no tokens)
    empty = t([[1, 1, 0, 0], [0, 0, 0, 0]])
    close(aggregate_loss(LOSSES, empty, "token"), 3 / 2)
    close(aggregate_loss(LOSSES, empty, "sequence"), (3 / 2 + 0) / 2)
    close(aggregate_loss(LOSSES, empty, "constant", constant=2), 3 / (2 * 2))
    close(aggregate_loss(LOSSES, torch.zeros_like(MASK), "token"), 0.0)  # nothing to learn from: 0, not NaN
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        aggregate_loss(LOSSES, MASK, "mean")
    with pytest.raises(ValueError, match="positive constant"):
        aggregate_loss(LOSSES, MASK, "constant")


@pytest.mark.parametrize("how,weights", [
    # d loss / d logp_t at ratio 1 is -A_b * w_bt: the weight each aggregation gives a token
    ("token", [[1 / 4, 1 / 4, 1 / 4, 0], [1 / 4, 0, 0, 0]]),  # 4 tokens in the batch
    ("sequence", [[1 / 6, 1 / 6, 1 / 6, 0], [1 / 2, 0, 0, 0]]),  # 1 / (B * len_b): short answers weigh more
    ("constant", [[1 / 8, 1 / 8, 1 / 8, 0], [1 / 8, 0, 0, 0]]),  # 1 / (B * C), C = 4: no length bias
])
def test_gradient_weight_of_each_token_per_aggregation(how, weights) -> None:
    adv = t([2.0, -1.0])
    logp = torch.zeros(2, 4, requires_grad=True)
    loss, _ = clipped_policy_loss(logp, logp.detach(), adv, MASK, 0.2, how, constant=4)
    loss.backward()
    w = t(weights)
    close(logp.grad, -adv[:, None] * w)


# ------------------------------------------------------------------------------------------ clipped loss


def test_clipped_policy_loss_by_hand_for_each_aggregation() -> None:
    # ratios rho = exp(logp - 0): row 0 (A = +1): 1.5, .5, 1; row 1 (A = -2): 1.5, .5, (pad: logp 50)
    logp = torch.log(t([[1.5, 0.5, 1.0], [1.5, 0.5, 1.0]]))
    logp[1, 2] = 50.0  # a padded position: its ratio must not overflow into the loss
    old = torch.zeros(2, 3)
    adv = t([1.0, -2.0])
    mask = t([[1, 1, 1], [1, 1, 0]])
    # l = max(-A rho, -A clip(rho, .8, 1.2)):
    #   row 0: max(-1.5, -1.2) = -1.2 (clipped larger); max(-.5, -.8) = -.5; max(-1, -1) = -1
    #   row 1: max(3, 2.4) = 3; max(1, 1.6) = 1.6 (clipped larger)
    # token: (-1.2 - .5 - 1 + 3 + 1.6) / 5 = .38; sequence: (-2.7 / 3 + 4.6 / 2) / 2 = .7; constant 4: 1.9 / 8
    for how, expected in (("token", 0.38), ("sequence", 0.7), ("constant", 1.9 / 8)):
        loss, stats = clipped_policy_loss(logp, old, adv, mask, 0.2, how, constant=4)
        close(loss, expected, atol=1e-6)
        close(stats["pg_loss"], expected, atol=1e-6)
        close(stats["clipfrac"], 2 / 5)
        close(stats["kl_loss"], 0.0)
    # with the k3 term: beta .5 and per-token KL [[.2, 0, 0], [0, .4, 7 (pad)]] -> token: .38 + .5 * .6 / 5
    kl = t([[0.2, 0.0, 0.0], [0.0, 0.4, 7.0]])
    loss, stats = clipped_policy_loss(logp, old, adv, mask, 0.2, "token", kl_tokens=kl, beta=0.5)
    close(loss, 0.38 + 0.5 * 0.6 / 5, atol=1e-6)
    close(stats["kl_loss"], 0.6 / 5, atol=1e-6)
    # sequence: kl .2 / 3 and .4 / 2 -> mean .133333; loss .7 + .5 * .133333
    loss, _ = clipped_policy_loss(logp, old, adv, mask, 0.2, "sequence", kl_tokens=kl, beta=0.5)
    close(loss, 0.7 + 0.5 * (0.2 / 3 + 0.4 / 2) / 2, atol=1e-6)


def test_zero_variance_group_gives_no_policy_gradient() -> None:
    # an all-correct group: advantages 0 -> the surrogate's gradient is exactly 0; only the KL term pulls
    adv = grpo_advantages(t([1.0, 1.0, 1.0]), 3)
    logp = torch.full((3, 2), -1.0, requires_grad=True)
    loss, _ = clipped_policy_loss(logp, logp.detach(), adv, torch.ones(3, 2), 0.2, "token")
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros(3, 2))


def test_truncated_rows_are_the_ones_without_eos() -> None:
    eos = 2
    ids = torch.tensor([[5, 2, 1], [5, 6, 7], [2, 1, 1], [5, 6, 2]])
    mask = t([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])  # row 3: EOS exactly at the last column
    assert truncated_rows(ids, mask, eos).tolist() == [False, True, False, False]


# ----------------------------------------------------------------------------------------------- configs


def test_config_defaults_match_the_yaml_files(tmp_path) -> None:
    """The dataclass defaults and conf/method/*.yaml agree (a config built in code behaves as the app's)."""
    for name, cls in (("grpo", GRPOConfig), ("rloo", RLOOConfig)):
        yaml = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / f"{name}.yaml"))
        code = cls()
        assert {k: v for k, v in yaml.items() if getattr(code, k) != v} == {}, name
    g, r = GRPOConfig(), RLOOConfig()
    assert (g.num_generations, g.kl_coef, g.kl_mode, g.loss_aggregation, g.scale_rewards) == (
        8, 0.04, "loss", "sequence", "group")
    assert (r.num_generations, r.kl_coef, r.kl_mode, r.loss_aggregation, r.loss_constant) == (
        2, 0.05, "reward", "constant", 1)


def test_config_errors_are_one_line(tmp_path) -> None:
    base = [f"paths.results_dir={tmp_path}"]
    with pytest.raises(ConfigError, match=r"^method.num_generations must be >= 2 for RLOO"):
        load_run_config([*base, "method=rloo", "method.num_generations=1"])
    with pytest.raises(ConfigError, match=r"^method.loss_aggregation='mean'"):
        load_run_config([*base, "method=grpo", "method.loss_aggregation=mean"])
    with pytest.raises(ConfigError, match=r"^method.kl_mode='k2'"):
        load_run_config([*base, "method=rloo", "method.kl_mode=k2"])
    rc = load_run_config([*base, "method=grpo", "method.scale_rewards=none", "method.loss_aggregation=constant"])
    assert isinstance(rc.method, GRPOConfig) and rc.method.scale_rewards == "none"


# ------------------------------------------------------------------------------------------- end to end

QUICK = ["dataset.train_size=96", "dataset.test_size=16", "sft.epochs=2", "dataset.warmup_epoch.n=1",
         "inference.max_new_tokens=24", "sft.eval_max_length=112", "method.eval_max_length=112",
         "method.batch_size=4", "method.num_generations=4", "method.max_length=120", "method.max_questions=16",
         "method.eval_batch_size=16", "progress=false"]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    """One results dir for the end-to-end tests: their SFT warm-up is one cached stage."""
    return tmp_path_factory.mktemp("critic_free")


STEP_KEYS = {"score", "correct", "kl", "kl_k3", "loss", "pg_loss", "kl_loss", "clipfrac", "entropy",
             "response_length", "truncated", "reward", "mean_abs_advantage", "zero_variance_groups",
             "zero_variance_fraction", "all_correct_groups", "time_generate", "time_score", "time_update"}


@pytest.mark.parametrize("method,extra", [("grpo", []), ("rloo", ["method.ppo_epochs=2"]),
                                          ("grpo", ["method.kl_mode=reward", "method.scale_rewards=none",
                                                    "method.loss_aggregation=constant", "method.mask_truncated=true"])])
def test_runs_from_the_sft_warmup_and_logs_its_steps(method, extra, quick_results) -> None:
    from conftest import run_config

    from reft_exp.run import run_cell
    from reft_exp.runner import read_steps

    rec = run_cell(run_config([*QUICK, f"method={method}", "method.epochs=2", *extra], quick_results))
    assert "/sft/" in rec["method"]["init_checkpoint"]  # the warm-up of the shared SFT run
    assert [e["epoch"] for e in rec["epochs"]] == [0, 1, 2]  # epoch 0 = the warm-up's greedy accuracy
    assert rec["accuracy"] == max(e["test_accuracy"] for e in rec["epochs"][1:])
    steps = read_steps(rec["method"]["steps_file"])
    assert len(steps) == 2 * (16 // 4) and STEP_KEYS <= set(steps[0])
    for s in steps:  # 4 groups of 4 per step; zero-variance ones counted among them
        assert 0 <= s["zero_variance_groups"] <= 4 and s["all_correct_groups"] <= s["zero_variance_groups"]
        assert s["zero_variance_fraction"] == s["zero_variance_groups"] / 4
    # The policy is the reference until a step has a group with some variance: all-equal groups (here the
    # barely trained warm-up is often wrong on every sample) give advantage 0, and k3's gradient at the
    # reference is 0, so such a step leaves the policy exactly as it was. After a step with signal, it moves.
    signal = [i for i, s in enumerate(steps) if s["zero_variance_groups"] < 4]
    still = steps if not signal else steps[: signal[0] + 1]
    assert all(s["kl"] == 0.0 and s["kl_k3"] == 0.0 and s["mean_abs_advantage"] == 0.0 for s in still[:-1])
    assert still[-1]["kl"] == 0.0
    if signal and signal[0] + 1 < len(steps):
        assert any(abs(s["kl"]) > 1e-6 for s in steps[signal[0] + 1:]), "the policy moves away from the reference"


# ----------------------------------------------------------------------------------------- tables, plots


def test_grpo_and_rloo_are_table1_rows_without_paper_numbers_and_plot_their_steps(tmp_path) -> None:
    import json

    from test_plots import _record

    from reft_exp import plots, tables
    from reft_exp.results import write_record

    runs = tmp_path / "runs"
    runs.mkdir()
    for method, acc, length in (("reft", 0.70, 50.0), ("grpo", 0.60, 40.0), ("rloo", 0.65, 30.0)):
        steps = tmp_path / method / "steps.jsonl"
        steps.parent.mkdir()
        steps.write_text("".join(json.dumps({"epoch": 1, "step": s, "score": 0.5, "correct": 0.4, "kl": 0.1 * s,
                                             "response_length": length + s}) + "\n" for s in (1, 2, 3)))
        rec = _record("codellama-7b", "gsm8k", "p", method, 1, {0: 0.5, 1: acc}, steps_file=steps)
        write_record(runs / f"{rec['cell_id']}.json", rec)
    table = tables.build_table1(tables.load_records(runs))
    assert list(table.index) == [("codellama-7b", "reft"), ("codellama-7b", "grpo"), ("codellama-7b", "rloo")]
    cell = table["gsm8k P-CoT"]
    assert cell["ours"].tolist() == pytest.approx([70.0, 60.0, 65.0])
    assert not math.isnan(cell.loc[("codellama-7b", "reft"), "paper"])  # the paper has ReFT's number...
    assert cell.loc[[("codellama-7b", "grpo"), ("codellama-7b", "rloo")], "paper"].isna().all()  # ...not these
    shown = tables.format_table(table)
    assert shown.loc[("codellama-7b", "grpo"), ("gsm8k P-CoT", "paper")] == tables.MISSING
    fig = plots.step_figure(plots.load_curves(runs), ("codellama-7b", "gsm8k", "p"))
    assert [ax.get_title() for ax in fig.axes] == ["reward (score)", "fraction correct", "KL to the reference",
                                                   "response length (tokens)"]
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in fig.axes[3].get_lines()}
    assert lines == {"reft": [51.0, 52.0, 53.0], "grpo": [41.0, 42.0, 43.0], "rloo": [31.0, 32.0, 33.0]}
    assert [list(ln.get_ydata()) for ln in fig.axes[2].get_lines()] == [pytest.approx([0.1, 0.2, 0.3])] * 3
