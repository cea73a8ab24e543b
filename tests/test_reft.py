"""ReFT end to end on a few seconds of tiny data: it runs, logs what it must, and resumes exactly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import launch
import pytest
from test_run import run_app

from reft_exp.methods.reft import read_steps

pytestmark = pytest.mark.seconds(52)  # its measured time in `make test`: orders the collection (conftest)

QUICK = ["dataset.train_size=96", "dataset.test_size=16", "sft.epochs=2", "dataset.warmup_epoch.n=1",
         "inference.max_new_tokens=24", "sft.eval_max_length=112", "method.eval_max_length=112", "method=reft", "method.batch_size=16", "method.max_length=120",
         "method.max_questions=48", "method.eval_batch_size=16", "progress=false"]
STEP_KEYS = {"score", "correct", "kl", "pg_loss", "vf_loss", "clipfrac", "vf_clipfrac", "entropy",
             "response_length", "time_generate", "time_score", "time_update"}


def _record(results: Path) -> dict:
    (path,) = (results / "runs").glob("*__reft__*.json")
    return json.loads(path.read_text())


def test_reft_runs_from_the_shared_sft_warmup(tmp_path):
    results = tmp_path / "results"
    proc = run_app([f"paths.results_dir={results}", *QUICK, "method.epochs=2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = _record(results)
    # ReFT starts from the warm-up: the SFT run's epoch_<dataset.warmup_epoch.n> checkpoint
    assert rec["stages"]["sft"]["reused"] is False and rec["method"]["init_checkpoint"].endswith("epoch_1")
    assert rec["warmup"] == {"epoch": 1, "rule": "fixed", "checkpoint": rec["method"]["init_checkpoint"]}
    assert [e["epoch"] for e in rec["epochs"]] == [0, 1, 2]  # epoch 0 = the warm-up's greedy accuracy
    # the best epoch is one of 1.., never the warm-up (train_rl_reft.py:854), whose accuracy is kept beside it
    assert rec["accuracy"] == max(e["test_accuracy"] for e in rec["epochs"][1:])
    assert rec["best_epoch"] in (1, 2)
    assert rec["inference"]["warmup_accuracy"] == rec["epochs"][0]["test_accuracy"]
    steps = read_steps(rec["method"]["steps_file"])
    assert len(steps) == 2 * (48 // 16) and STEP_KEYS <= set(steps[0])
    assert abs(steps[0]["kl"]) < 1e-5, "the first rollout's policy is the reference"
    assert any(abs(s["kl"]) > 1e-4 for s in steps[1:]), "the policy moves away from the reference"
    # an SFT cell of the same grid reuses the SFT run that ReFT trained
    proc = run_app([f"paths.results_dir={results}", *[a for a in QUICK if not a.startswith("method")],
                    "method=sft"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sft_path,) = (results / "runs").glob("*__sft__*.json")
    assert json.loads(sft_path.read_text())["stages"]["sft"]["reused"] is True


def test_reft_killed_mid_run_resumes_to_the_same_result(tmp_path):
    args = [*QUICK, "method.epochs=2"]  # killed after epoch 1, resumed for epoch 2
    straight = tmp_path / "straight"
    assert run_app([f"paths.results_dir={straight}", *args], tmp_path).returncode == 0

    # the resumed run starts from the straight run's SFT run and warm-up evaluation (its cache without the ReFT
    # stage, a results folder's cache moves: tests/test_stages.py): what is killed and resumed is ReFT alone
    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "cache", resumed / "cache",
                    ignore=lambda d, names: ["reft"] if Path(d).name == "cache" else [])
    proc = launch.popen(["-m", "reft_exp.run", f"paths.results_dir={resumed}", *args], cwd=tmp_path,
                        env=launch.app_env(), stdout=tmp_path / "killed.log")
    deadline = time.time() + 300
    progress = None
    while time.time() < deadline and proc.poll() is None:
        found = list((resumed / "cache" / "reft").glob("*/last_state/progress.json"))
        if found and json.loads(found[0].read_text())["epoch"] >= 1:
            progress = found[0]
            break
        time.sleep(0.2)
    assert progress is not None, "the run never checkpointed an epoch"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed / "runs").exists()
    rerun = run_app([f"paths.results_dir={resumed}", *args], tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming after epoch" in rerun.stdout + rerun.stderr
    assert _record(resumed)["stages"]["sft"]["reused"] is True
    a, b = _record(straight), _record(resumed)
    assert [e.get("test_accuracy") for e in a["epochs"]] == [e.get("test_accuracy") for e in b["epochs"]]
    sa, sb = read_steps(a["method"]["steps_file"]), read_steps(b["method"]["steps_file"])
    assert [s["step"] for s in sb] == [s["step"] for s in sa]
    for x, y in zip(sa, sb):
        assert abs(x["score"] - y["score"]) < 1e-6 and abs(x["kl"] - y["kl"]) < 1e-4, (x, y)


def test_the_kl_penalty_holds_the_policy_near_the_reference(tmp_path):
    """beta = 0 drifts clearly further than the default beta over the same steps, from the same warm-up and
    the same first rollout (a weak quick warm-up: the rewards are mostly 0, so the KL term is what steers)."""
    from conftest import run_config

    from reft_exp.run import run_cell

    # 12 steps of 8 questions; lr 10x the tiny default so that the drift shows within them (measured: KL over
    # steps 7-12 about 1.0 with beta 0.05 and 2.2 with beta 0)
    args = [*QUICK, "method.epochs=1", "method.max_questions=96", "method.batch_size=8", "method.lr=5e-4"]
    kls = {}
    for beta in ("0.05", "0"):
        rec = run_cell(run_config([*args, f"method.kl_coef={beta}"], tmp_path / "results"))
        kls[beta] = [s["kl"] for s in read_steps(rec["method"]["steps_file"])]
    assert len(kls["0"]) == 12 and kls["0"][0] == kls["0.05"][0], "same first rollout (policy = reference)"
    late = {beta: sum(v[6:]) / 6 for beta, v in kls.items()}
    print(f"sequence KL over steps 7-12: beta 0.05 {late['0.05']:.3f}, beta 0 {late['0']:.3f}")
    assert late["0"] > 1.5 * late["0.05"]
