"""End to end through the Hydra app: results records, multirun, skip-on-rerun, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launch import run_app

pytestmark = pytest.mark.seconds(37)  # its measured time in `make test`: orders the collection (conftest)

ROOT = Path(__file__).resolve().parents[1]
# A few seconds of work: tiny data, one epoch, short generations.
QUICK = ["dataset.train_size=64", "dataset.test_size=16", "sft.epochs=1", "inference.max_new_tokens=24",
         "progress=false"]


def test_single_run_writes_a_complete_record(tmp_path):
    proc = run_app([f"paths.results_dir={tmp_path}/results", *QUICK], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp_path / "results" / "runs").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["cell_id"] == "tiny__arith__n__sft__greedy__seed42" == path.stem
    assert rec["coordinates"] == {"model": "tiny", "dataset": "arith", "cot": "n", "method": "sft",
                                  "inference": "greedy", "seed": 42}
    assert 0.0 <= rec["accuracy"] <= 1.0 and rec["accuracy"] == rec["best_accuracy"]
    assert len(rec["epochs"]) == 1 and rec["epochs"][0]["train_loss"] > 0
    assert rec["config"]["sft"]["epochs"] == 1
    assert {"python", "torch", "transformers", "git_commit"} <= set(rec["versions"])
    assert rec["hardware"]["cpu_count"] >= 1
    assert {"data", "method", "total"} <= set(rec["timings_s"])
    assert rec["stages"]["sft"]["reused"] is False
    assert "accuracy_with_header" not in rec["inference"]  # N-CoT: no program header to check
    assert rec["distributed"] == {"world_size": 1, "distributed_type": "NO", "process_index": 0}
    # which files composed the cell, auto-selected ones included; none for an optional file that does not exist
    assert rec["hydra_choices"]["method"] == "sft" and rec["hydra_choices"]["scale"] == "tiny"
    assert rec["hydra_choices"]["method_cot"] is None and not any(k.startswith("hydra") for k in rec["hydra_choices"])
    # re-running the same cell skips it: the record is not rewritten
    mtime = path.stat().st_mtime_ns
    proc = run_app([f"paths.results_dir={tmp_path}/results", *QUICK], tmp_path)
    assert proc.returncode == 0 and "skipped" in proc.stderr + proc.stdout
    assert path.stat().st_mtime_ns == mtime


def test_multirun_over_seeds_writes_two_records(tmp_path):
    proc = run_app(["--multirun", "seed=1,2", f"paths.results_dir={tmp_path}/results", *QUICK], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = sorted((tmp_path / "results" / "runs").glob("*.json"))
    assert [p.stem for p in records] == ["tiny__arith__n__sft__greedy__seed1", "tiny__arith__n__sft__greedy__seed2"]
    seeds = [json.loads(p.read_text())["coordinates"]["seed"] for p in records]
    assert seeds == [1, 2]
    # the tiny model is built once and shared by both jobs
    assert len(list((tmp_path / "results" / "cache" / "tiny_model").glob("*/STAGE_DONE.json"))) == 1


@pytest.mark.parametrize("args,needle", [
    (["sft.lrr=1"], "lrr"),
    (["method=nonexistent"], "Available options"),
    (["+sft.lrr=1"], "sft.lrr"),
    (["model=codellama-7b", "model.path=/does/not/exist"], "does not exist"),
    (["method=reft", "method.value_head_init=bogus"],
     "method.value_head_init='bogus' (in the command-line override 'method.value_head_init=bogus') is not one of"),
    (["sft.train_epochs=99"], "sft.train_epochs must be null or 1..sft.epochs (6), got 99 (in the command-line"),
])
def test_bad_config_fails_at_start_with_one_line(args, needle, tmp_path):
    proc = run_app([f"paths.results_dir={tmp_path}/results", *args], tmp_path, timeout=120)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line: no traceback, no Hydra block
    assert proc.stderr.startswith("reft_exp: config error: ")
    assert not (tmp_path / "results" / "runs").exists()


def test_pcot_runs_end_to_end(tmp_path):
    proc = run_app([f"paths.results_dir={tmp_path}/results", "cot=p", *QUICK], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "results" / "runs" / "tiny__arith__p__sft__greedy__seed42.json").read_text())
    assert rec["coordinates"]["cot"] == "p"
    # the greedy evaluation ran the model's programs: the epoch has an accuracy and an extraction rate
    assert {"test_accuracy", "test_extracted"} <= set(rec["epochs"][0])
    assert rec["config"]["cot"]["name"] == "p" and rec["stages"]["sft"]["reused"] is False
    # inference.header_check: SFT's best checkpoint also evaluated with the P-CoT header in the prompt, a cached
    # stage: the cell recomputed reuses it (and the SFT run) and reports the same number
    assert 0.0 <= rec["inference"]["accuracy_with_header"] <= 1.0 and rec["stages"]["header_eval"]["reused"] is False
    proc = run_app([f"paths.results_dir={tmp_path}/results", "cot=p", *QUICK, "overwrite=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / "results" / "runs" / "tiny__arith__p__sft__greedy__seed42.json").read_text())
    assert again["stages"]["header_eval"]["reused"] is True and again["stages"]["sft"]["reused"] is True
    assert again["inference"]["accuracy_with_header"] == rec["inference"]["accuracy_with_header"]


def test_pcot_scoring_runs_the_programs():
    """The evaluation path scores P-CoT completions by executing them in the sandbox."""
    from reft_exp.answers import AnswerSpec
    from reft_exp.data.arith import generate_arith
    from reft_exp.evaluate import score_completions
    from reft_exp.execute import ProgramExecutor

    recs = generate_arith(5, 0, 40, "p")["test"]
    spec = AnswerSpec(answer_type="numeric", cot="p")
    wrong = [r["answer_cot"].replace("return result", "return result + 1") for r in recs[:10]]
    with ProgramExecutor(timeout_s=5) as ex:
        rows = score_completions(recs, [r["answer_cot"] for r in recs], spec, ex)
        bad = score_completions(recs[:10], wrong, spec, ex)
    assert all(r["correct"] for r in rows) and len(rows) == 40
    assert not any(r["correct"] for r in bad) and all(r["pred"] is not None for r in bad)


def test_changed_config_recomputes_the_cell(tmp_path):
    args = [f"paths.results_dir={tmp_path}/results", *QUICK]
    assert run_app(args, tmp_path).returncode == 0
    path = tmp_path / "results" / "runs" / "tiny__arith__n__sft__greedy__seed42.json"
    first = json.loads(path.read_text())
    proc = run_app([*args, "sft.lr=1e-3"], tmp_path)
    assert proc.returncode == 0 and "another config" in proc.stdout + proc.stderr
    second = json.loads(path.read_text())
    assert second["config_hash"] != first["config_hash"] and second["config"]["sft"]["lr"] == 1e-3


def test_sft_train_epochs_trains_the_first_epochs_of_the_full_schedule(tmp_path):
    """``sft.train_epochs=1`` of a 3-epoch schedule is epoch 1 of the 3-epoch run (same loss, same lr, which is
    not annealed to 0), not a 1-epoch run; a warm-up epoch beyond it is refused at start."""
    from conftest import run_config

    from reft_exp.run import run_cell

    base = ["dataset.train_size=64", "dataset.test_size=8", "sft.epochs=3", "sft.batch_size=16",
            "inference.max_new_tokens=16", "dataset.warmup_epoch.n=1", "progress=false"]
    full = run_cell(run_config(base, tmp_path / "full"))["epochs"]
    part = run_cell(run_config([*base, "sft.train_epochs=1"], tmp_path / "part"))["epochs"]
    one = run_cell(run_config([*base[:2], "sft.epochs=1", *base[3:]], tmp_path / "one"))["epochs"]
    assert [e["epoch"] for e in part] == [1] and len(full) == 3
    assert part[0]["train_loss"] == full[0]["train_loss"] and part[0]["lr"] == full[0]["lr"] > 0
    assert one[0]["lr"] == 0.0  # a 1-epoch schedule anneals to 0 by its end
    proc = run_app(["method=reft", "sft.epochs=3", "sft.train_epochs=1", "dataset.warmup_epoch.n=2"], tmp_path)
    assert proc.returncode != 0 and "sft.train_epochs=1" in proc.stderr


def test_stage_timer_accumulates_and_refuses_to_count_a_stage_twice():
    """A record's timings: a name entered twice in a row adds up; entered inside itself (the rerank cell once timed
    its reranker's training around the runner's own timer of the same name) it would count twice and fails."""
    from reft_exp.utils import StageTimer

    timer = StageTimer()
    for _ in range(2):
        with timer("train"), timer("eval"):
            pass
    assert set(timer.seconds) == {"train", "eval"} and timer.seconds["train"] >= timer.seconds["eval"] >= 0
    with pytest.raises(RuntimeError, match="twice"), timer("train"), timer("train"):
        pass
    with timer("train"):  # the refused entry left the timer usable
        pass
