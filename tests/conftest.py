"""Shared test fixtures. Tests run offline (the Makefile sets HF_*_OFFLINE and WANDB_MODE)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
SHARED_DIR = Path(os.environ.get("REFT_SHARED_DIR", ROOT.parent / "shared"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def pytest_collection_modifyitems(config, items):
    """Long poles first: files holding a `slow` test (the learning tests, minutes each) are collected first, so
    that with `make test` (xdist --dist loadfile --no-loadscope-reorder) they start at once on their own worker
    while the other worker runs the many short files (xdist's default reorder, most tests per file first,
    started the learning file last and made it the end of the run). Among the short files, those marked `heavy`
    (15-80 s each) come before the rest, so that the run ends on files of a few seconds and both workers finish
    together (ending on a 30 s file left one worker idle for ~20 s). Files marked `learning_tail` (~3 minutes)
    reuse the learning tests' SFT run: they go half-way down the heavy files (~2 minutes of work for the other
    worker), late enough for that run to be done when that worker reaches them, early enough that they do not
    become the end of the run (placed after all heavy files they ended it 80 s after the other worker)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    tail_files = {item.path for item in items if item.get_closest_marker("learning_tail")}
    heavy_files = {item.path for item in items if item.get_closest_marker("heavy")}
    short_paths = list(dict.fromkeys(item.path for item in items if item.path not in slow_files | tail_files))
    short_paths.sort(key=lambda path: path not in heavy_files)  # stable: heavy first, each group as collected
    short = {path: i for i, path in enumerate(short_paths)}
    half = len(heavy_files - slow_files - tail_files) // 2 or len(short) // 2

    def rank(item) -> tuple[int, float]:
        if item.path in tail_files:
            return 1, half - 0.5
        if item.path in slow_files:
            return 0, 0
        return 1, short[item.path]

    items.sort(key=rank)  # stable: the order of tests within a file is kept


@pytest.fixture(scope="session")
def learning_results(tmp_path_factory) -> Path:
    """One results dir for the learning tests of every xdist worker of this run, so that their shared SFT run is
    a stage computed once (the stage lock makes a second worker wait for it, then reuse it)."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp()
    path = base.parent / f"learning-{run_id}" if run_id else base / "learning"
    path.mkdir(exist_ok=True)
    return path


def config_groups() -> dict[str, list[str]]:
    """Every config group under conf/ and its options (file names without .yaml)."""
    groups = {}
    for d in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        groups[d.name] = sorted(f.stem for f in d.glob("*.yaml"))
    return groups


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED_DIR.exists():
        pytest.skip(f"shared data folder {SHARED_DIR} absent (set REFT_SHARED_DIR)")
    return SHARED_DIR


def compose(overrides: list[str] | None = None, results_dir: str | Path = "results", conf_dir: Path = CONF_DIR):
    """Compose the app's config with Hydra's compose API (as the app would), hydra node included."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[f"paths.results_dir={results_dir}"] +
                             list(overrides or []), return_hydra_config=True)


def run_config(overrides: list[str], results_dir: str | Path):
    """A validated RunConfig, composed as the app would compose it (for in-process runs)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from reft_exp.config import validate

    cfg = compose(overrides, results_dir)
    HydraConfig.instance().set_config(cfg)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return validate(cfg, choices)
