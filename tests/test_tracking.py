"""W&B tracking: an offline run of a smoke cell writes its run folder (grouped by sweep, tagged with the grid
coordinates, with the cell's metrics); the fallbacks (no API key, no wandb package) are said once; the
tables go to W&B as wandb.Table s."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import launch
import pytest

from reft_exp import tables, tracking
from reft_exp.config import LoggerConfig
from reft_exp.results import write_record

pytestmark = pytest.mark.seconds(10)  # its measured time in `make test`: orders the collection (conftest)

ROOT = Path(__file__).resolve().parents[1]
# a few seconds of work per cell
SMOKE = ["dataset.train_size=32", "dataset.test_size=8", "sft.epochs=1", "inference.max_new_tokens=8",
         "progress=false"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    # wandb's folders (settings, cache, runs) in tmp_path; HOME is left as it is (the libraries read it at import:
    # a changed HOME would start the app as a plain subprocess, not a fork of the worker's zygote, tests/launch.py)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT),
               WANDB_DIR=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
               WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"), WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
               WANDB_SILENT="true")
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _fresh_wandb_per_test():
    """wandb keeps a process-wide setup (its folder, WANDB_DIR read once): tear it down after each test so that
    the next test's run goes to its own folder."""
    yield
    if importlib.util.find_spec("wandb") is not None:
        import wandb

        wandb.teardown()


def test_wandb_offline_run_of_a_smoke_cell_writes_its_run_folder(tmp_path):
    sweep = tmp_path / "sweep"
    proc = launch.run(
        ["-m", "reft_exp.run", "--multirun", "logger=wandb", "seed=3", "tag=v2",
         f"hydra.sweep.dir={sweep}", f"paths.results_dir={tmp_path}/results", *SMOKE],
        cwd=tmp_path, env=_env(tmp_path, WANDB_MODE="offline"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (log_file,) = run_dir.glob("run-*.wandb")  # the run's transaction log: what `wandb sync` uploads
    assert (run_dir / "files").is_dir() and (run_dir / "logs").is_dir()
    data = log_file.read_bytes()
    assert data.startswith(b":W&B") and len(data) > 1000
    cell = "tiny__arith__n__sft__greedy__seed3__v2"
    assert cell.encode() in data  # the run's name
    assert str(sweep).encode() in data  # group = the Hydra sweep folder
    for tag in ("model=tiny", "dataset=arith", "cot=n", "method=sft", "inference=greedy", "seed=3", "tag=v2"):
        assert tag.encode() in data, tag
    for key in ("sft/epoch_train_loss", "sft/epoch_test_accuracy", "accuracy"):  # per-epoch / summary
        assert key.encode() in data, key
    out = proc.stdout + proc.stderr
    assert f"W&B offline run written to {run_dir}" in out
    assert "no W&B API key" not in out  # WANDB_MODE=offline was asked for: nothing to fall back from
    assert (tmp_path / "results" / "runs" / f"{cell}.json").is_file()


def test_without_wandb_package_the_grid_runs_and_says_so_once(tmp_path):
    # `import wandb` fails in the app's process, as on a machine without the package
    code = ("import sys, runpy; sys.modules['wandb'] = None; sys.argv = ['reft_exp.run'] + sys.argv[1:]; "
            "runpy.run_module('reft_exp.run', run_name='__main__')")
    proc = launch.run(
        ["-c", code, "--multirun", "logger=wandb", "seed=1,2",
         f"hydra.sweep.dir={tmp_path}/sweep", f"paths.results_dir={tmp_path}/results", *SMOKE],
        cwd=tmp_path, env=_env(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "results" / "runs").glob("*.json"))
    assert runs == [f"tiny__arith__n__sft__greedy__seed{s}.json" for s in (1, 2)]
    # two cells in one process: said once
    assert (proc.stdout + proc.stderr).count("the wandb package is not installed") == 1
    assert not (tmp_path / "wandb").exists()


def test_no_api_key_falls_back_to_offline_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tracking, "_said", set())
    for k in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert not tracking.has_api_key()
    with caplog.at_level(logging.WARNING, logger="reft_exp.tracking"):
        assert [tracking.resolve_mode("online") for _ in range(3)] == ["offline"] * 3
    assert [r.getMessage() for r in caplog.records].count(
        "logger=wandb: no W&B API key found, logging offline (upload later with `wandb sync`)") == 1
    # a key in ~/.netrc for the W&B host counts; WANDB_MODE in the environment wins over the config
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert tracking.has_api_key() and tracking.resolve_mode("online") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.resolve_mode("online") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="sometimes"):
        tracking.resolve_mode("online")


def test_trackers_without_wandb(monkeypatch, caplog):
    monkeypatch.setattr(tracking, "_said", set())
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = LoggerConfig(name="wandb")
    with caplog.at_level(logging.WARNING, logger="reft_exp.tracking"):
        trackers = [tracking.make_tracker(cfg, f"cell{i}", {"method": {"name": "sft"}}, [], True)
                    for i in range(2)]
    assert [type(t) for t in trackers] == [tracking.Tracker] * 2
    assert sum("not installed" in r.getMessage() for r in caplog.records) == 1
    assert type(tracking.make_tracker(LoggerConfig(name="none"), "c", {}, [], True)) is tracking.Tracker
    with pytest.raises(ValueError, match="unknown logger"):
        tracking.make_tracker(LoggerConfig(name="mlflow"), "c", {}, [], True)


def test_wandb_tracker_records_what_it_is_given(tmp_path, monkeypatch):
    """logger=wandb on the main process: per-step metrics go to the run's history and the summary holds the
    cell's accuracy (read back from the run); on another process the tracker records nothing at all."""
    monkeypatch.setattr(tracking, "_said", set())
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = LoggerConfig(name="wandb", tags=["mine"])
    assert type(tracking.make_tracker(cfg, "cell", {}, [], is_main=False)) is tracking.Tracker
    tracker = tracking.make_tracker(cfg, "tiny__cell", {"method": {"name": "reft"}, "tag": "v3"}, ["seed=1"], True)
    assert isinstance(tracker, tracking.WandbTracker)
    run = tracker.run
    assert run.name == "tiny__cell" and run.job_type == "reft" and set(run.tags) == {"mine", "seed=1", "tag=v3"}
    tracker.log({"reft/score": 0.25}, step=1)
    tracker.log({"reft/score": 0.75}, step=2)
    tracker.summary({"accuracy": 0.5})
    assert run.summary["accuracy"] == 0.5
    tracker.finish()
    import wandb

    # the run's transaction log is written by wandb's service process, which finish() does not wait for (seen
    # once under a loaded 2-worker suite: the file still held its header only); teardown ends the service
    wandb.teardown()
    (log_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert b"reft/score" in log_file.read_bytes()
    assert not list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))[1:]  # the non-main one: no run


def test_tables_logged_to_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "_said", set())
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs = tmp_path / "runs"
    runs.mkdir()
    rec = {"record_version": 1, "cell_id": "tiny__arith__n__sft__greedy__seed1", "status": "complete",
           "coordinates": {"model": "tiny", "dataset": "arith", "cot": "n", "method": "sft",
                           "inference": "greedy", "seed": 1},
           "accuracy": 0.375, "epochs": [{"epoch": 1, "test_accuracy": 0.375}], "method": {},
           "config": {"tag": ""}}
    write_record(runs / f"{rec['cell_id']}.json", rec)
    tables.main(["--runs", str(runs), "--out", str(tmp_path / "tables"), "--wandb"])
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (table_file,) = (run_dir / "files" / "media" / "table").glob("table1_*.table.json")
    t = json.loads(table_file.read_text())
    assert t["columns"][:5] == ["model", "method", "arith N-CoT ours", "arith N-CoT paper", "arith N-CoT Δ"]
    assert t["data"] == [["tiny", "sft", "37.5", "—", "—", "37.5", "—", "—"]]
    assert list((run_dir / "files" / "media" / "images" / "plots").glob("accuracy_per_epoch_*.png"))
    assert not list((run_dir / "files" / "media" / "table").glob("table2_*"))  # no voting records: no table
