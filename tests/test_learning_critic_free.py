"""Learning tests of the critic-free methods (slow, still run in CI): GRPO and RLOO raise the training reward
over the warm-up.

They reuse the learning tests' SFT run (tests/test_learning.py: P-CoT, batch 16, the first 2 epochs of a
4-epoch schedule, warm-up greedy 80%, its samples right ~75% of the time) through the run-wide
`learning_results` dir, and train with the tiny defaults (conf/model_method/tiny_grpo.yaml, tiny_rloo.yaml:
8 questions x G 8 = 64 samples per step, lr 5e-5), for fewer steps than the tiny sweep so that each fits
~60-90 s of one CPU core. Measured margins are in docs/critic_free.md.
"""

from __future__ import annotations

import pytest
from conftest import run_config
from test_learning import SFT

from reft_exp.run import run_cell
from reft_exp.runner import read_steps

pytestmark = pytest.mark.slow

STEPS = 10  # x 64 samples: 640 rollout samples (80 questions x G 8)


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_critic_free_raises_training_reward(method, learning_results):
    rec = run_cell(run_config([*SFT, f"method={method}", f"method.max_questions={8 * STEPS}", "method.epochs=1"],
                              learning_results))
    steps = read_steps(rec["method"]["steps_file"])
    correct = [s["correct"] for s in steps]
    kl = [s["kl"] for s in steps]
    zero_var = [s["zero_variance_groups"] for s in steps]
    first, last = sum(correct[:3]) / 3, sum(correct[-3:]) / 3
    warmup, after = rec["epochs"][0]["test_accuracy"], rec["epochs"][1]["test_accuracy"]
    print(f"{method}: train fraction correct per step {[round(c, 3) for c in correct]}; KL "
          f"{[round(k, 3) for k in kl]}; zero-variance groups of 8 {zero_var}; greedy test {warmup:.3f} -> "
          f"{after:.3f}")
    assert len(steps) == STEPS
    assert all(0 <= z <= 8 for z in zero_var) and any(z < 8 for z in zero_var), "some groups carry signal"
    assert last > first + 0.05, "the training reward rises over the warm-up's"
    assert max(kl) < 2.0, "KL to the reference stays bounded"
