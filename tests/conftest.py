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


def _seconds(item) -> float:
    marker = item.get_closest_marker("seconds")
    return float(marker.args[0]) if marker else 0.0


def pytest_collection_modifyitems(config, items):
    """Long files first, so that `make test` (xdist --dist loadfile --no-loadscope-reorder, two workers) ends on
    files of a few seconds and both workers finish together. Each file of 8 s or more carries its measured time
    in `make test` (`pytest.mark.seconds(n)`); files without it take about a second.

    The order: files holding a `slow` test, longest first (the learning tests' file, whose SFT run the
    `learning_tail` files reuse, starts at once on one worker while the other runs the real model and the
    reliability files); then the other files longest first, the `learning_tail` files right after the first
    of them, when the other worker has worked ~2 minutes and that SFT run (~100 s) is done (had it not, the
    stage lock would make them wait for it, not train it twice).

    Why this order: xdist hands a worker its next file when the worker starts the last test of its current one,
    so a long last test (the learning file's ReFT test, ~45 s) commits the next file long before it runs. A
    simulation of that rule over the measured per-test times (docs/decisions.md, 2026-12-01) put this order at
    ~390 s for 775 s of work, within 2 s of the best order a search found, with per-test times jittered +-15%;
    the previous marker order gave 402 s on average and 415 s in the run measured."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    tail_files = {item.path for item in items if item.get_closest_marker("learning_tail")}
    seconds = {}
    for item in items:
        seconds[item.path] = max(seconds.get(item.path, 0.0), _seconds(item))
    files = list(seconds)  # collection order, kept among equal times (sorts are stable)
    by_time = sorted(files, key=lambda path: -seconds[path])
    first = [path for path in by_time if path in slow_files - tail_files]
    rest = [path for path in by_time if path not in slow_files and path not in tail_files]
    tails = [path for path in by_time if path in tail_files]
    order = {path: i for i, path in enumerate(first + rest[:1] + tails + rest[1:])}
    items.sort(key=lambda item: order[item.path])  # stable: the order of tests within a file is kept


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
