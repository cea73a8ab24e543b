"""Launchers: our presets compose (joblib on one machine, submitit on SLURM with GPUs / time / partition from
the preset) and a 2-cell multirun really runs in parallel worker processes with the joblib launcher."""

from __future__ import annotations

import json
import re

import launch
import pytest
from conftest import CONF_DIR, ROOT, compose
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from reft_exp.config import validate

pytestmark = pytest.mark.seconds(16)  # its measured time in `make test`: orders the collection (conftest)

SMOKE = ["dataset.train_size=32", "dataset.test_size=8", "sft.epochs=1", "inference.max_new_tokens=8",
         "progress=false", "num_threads=1"]


def _launcher(overrides, tmp_path):
    cfg = compose(overrides, tmp_path)
    HydraConfig.instance().set_config(cfg)
    choices = dict(cfg.hydra.runtime.choices)
    launcher = OmegaConf.create(OmegaConf.to_container(cfg.hydra.launcher, resolve=True))
    with open_dict(cfg):
        del cfg["hydra"]
    validate(cfg, choices)  # the app's config is untouched by the launcher choice
    return choices["hydra/launcher"], launcher


def test_default_launcher_is_local_sequential(tmp_path):
    name, launcher = _launcher([], tmp_path)
    assert name == "basic"
    assert launcher._target_ == "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def test_joblib_preset(tmp_path):
    name, launcher = _launcher(["hydra/launcher=parallel", "hydra.launcher.n_jobs=3"], tmp_path)
    preset = OmegaConf.load(CONF_DIR / "hydra" / "launcher" / "parallel.yaml")
    assert name == "parallel"
    assert launcher._target_.endswith("joblib_launcher.JoblibLauncher")
    assert launcher.n_jobs == 3 and launcher.prefer == preset.prefer == "processes"
    assert _launcher(["hydra/launcher=parallel"], tmp_path)[1].n_jobs == preset.n_jobs
    assert type(instantiate(launcher)).__name__ == "JoblibLauncher"  # the plugin is installed


def test_slurm_preset(tmp_path):
    preset = OmegaConf.load(CONF_DIR / "hydra" / "launcher" / "slurm_gpu.yaml")
    name, launcher = _launcher(["hydra/launcher=slurm_gpu", "hydra.sweep.dir=sweeps/table1"], tmp_path)
    assert name == "slurm_gpu" and launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    for key in ("gpus_per_node", "timeout_min", "partition", "cpus_per_task", "mem_gb", "max_num_timeout"):
        assert launcher[key] == preset[key], key
    assert launcher.submitit_folder == "sweeps/table1/.submitit/%j"
    _, launcher = _launcher(["hydra/launcher=slurm_gpu", "hydra.launcher.partition=a100",
                             "hydra.launcher.gpus_per_node=8", "hydra.launcher.timeout_min=4320"], tmp_path)
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("a100", 8, 4320)
    assert type(instantiate(launcher)).__name__ == "SlurmLauncher"
    # the plugin's own config is reachable too
    assert _launcher(["hydra/launcher=submitit_slurm"], tmp_path)[1].gpus_per_node is None


def test_unknown_launcher_preset_fails(tmp_path):
    with pytest.raises(Exception, match="launcher"):
        compose(["hydra/launcher=nope"], tmp_path)


def test_joblib_multirun_two_cells_in_parallel(tmp_path):
    proc = launch.run_app(["--multirun", "hydra/launcher=parallel", "seed=1,2", f"hydra.sweep.dir={tmp_path}/sweep",
                           f"paths.results_dir={tmp_path}/results", *SMOKE], tmp_path)  # tests/launch.py
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in out
    records = sorted((tmp_path / "results" / "runs").glob("*.json"))
    assert [p.stem for p in records] == [f"tiny__arith__n__sft__greedy__seed{s}" for s in (1, 2)]
    assert [json.loads(p.read_text())["coordinates"]["seed"] for p in records] == [1, 2]
    # the shared tiny-model stage was built once, under its file lock, by one of the two workers
    assert len(list((tmp_path / "results" / "cache" / "tiny_model").glob("*/STAGE_DONE.json"))) == 1
    # each job has its own Hydra folder in the sweep
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]


def _make_var(text: str, name: str) -> list[str]:
    m = re.search(rf"^{name} := (.+)$", text, re.M)
    assert m, f"Makefile: no {name}"
    return m.group(1).split(",")


def test_make_demo_runs_the_cells_of_experiment_smoke_in_two_sweeps():
    """`make demo` splits experiment=smoke into its training cells (one sweep, one cell at a time) and its sampling
    cells (a second sweep, two at a time on one thread each): together exactly the experiment's cells, every
    sampling cell after the training cell of its method."""
    makefile = (ROOT / "Makefile").read_text()
    train, sample = _make_var(makefile, "DEMO_TRAIN_CELLS"), _make_var(makefile, "DEMO_SAMPLE_CELLS")
    smoke = OmegaConf.load(CONF_DIR / "experiment" / "smoke.yaml").hydra.sweeper.params.cell.split(",")
    assert sorted(train + sample) == sorted(smoke) and not set(train) & set(sample)

    def pair(cell):
        overrides = OmegaConf.load(CONF_DIR / "cell" / f"{cell}.yaml").defaults
        return {k.removeprefix("override /"): v for o in overrides for k, v in o.items()}

    assert all(pair(c)["inference"] == "greedy" for c in train)
    assert all(pair(c)["inference"] != "greedy" and f"{pair(c)['method']}_greedy" in train for c in sample)
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    first, second = recipe.index("cell=$(DEMO_TRAIN_CELLS)"), recipe.index("cell=$(DEMO_SAMPLE_CELLS)")
    assert first < second
    assert "hydra.callbacks.tables.enabled=false" in recipe[first:second]  # the tables once, after both sweeps
    assert {"hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "num_threads=1"} <= set(recipe[second:].split())
