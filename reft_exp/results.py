"""Results records: one JSON file per grid cell under ``results/runs/``, written atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from reft_exp.config import RunConfig
from reft_exp.utils import atomic_write_json, hardware, versions

# Bump when the record layout changes incompatibly; readers refuse records from another major version.
RECORD_VERSION = 1


class RecordError(ValueError):
    """A results record that cannot be read or comes from an incompatible reft_exp version (one line)."""


def cell_id(cfg: RunConfig) -> str:
    c = cfg.coordinates
    cid = f"{c['model']}__{c['dataset']}__{c['cot']}__{c['method']}__{c['inference']}__seed{c['seed']}"
    return f"{cid}__{cfg.root.tag}" if cfg.root.tag else cid


# Config keys that do not change a cell's result (where things go, how it is displayed or tracked).
NON_RESULT_KEYS = ("paths", "logger", "progress", "overwrite", "num_threads")


def config_hash(cfg: RunConfig) -> str:
    """Hash of the resolved config minus the keys that cannot change the result."""
    from reft_exp.stages import config_hash as _hash

    raw = OmegaConf.to_container(cfg.raw, resolve=True)
    return _hash({k: v for k, v in raw.items() if k not in NON_RESULT_KEYS})


def record_path(cfg: RunConfig) -> Path:
    return Path(cfg.paths.runs_dir) / f"{cell_id(cfg)}.json"


def build_record(cfg: RunConfig, method_out: dict[str, Any], inference_out: dict[str, Any],
                 timings: dict[str, float], stages: dict[str, dict],
                 distributed: dict[str, Any] | None = None,
                 executor: dict[str, str] | None = None, warmup: dict[str, Any] | None = None) -> dict[str, Any]:
    train = method_out.get("train", {})
    return {
        "record_version": RECORD_VERSION,
        "cell_id": cell_id(cfg),
        "config_hash": config_hash(cfg),
        "status": "complete",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "coordinates": cfg.coordinates,
        "accuracy": inference_out["accuracy"],  # the cell's number for the tables (percent 0-100 in tables)
        "best_accuracy": train.get("best_accuracy"),
        "best_epoch": train.get("best_epoch"),
        "final_accuracy": train.get("final_accuracy"),
        "inference": inference_out,
        "epochs": train.get("epochs", []),
        "method": {k: v for k, v in method_out.items() if k != "train"},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "stages": stages,
        # the SFT warm-up checkpoint the cell started from or sampled (epoch, rule, training-sample accuracies);
        # null when it used none
        "warmup": warmup,
        "versions": versions(),
        "hardware": hardware(),
        # the processes that ran the cell: world_size, distributed_type (NO, MULTI_CPU, MULTI_GPU, DEEPSPEED, ...)
        "distributed": distributed or {},
        # P-CoT: the program sandbox's layers ({isolation: strict | none, bwrap, seccomp}); null for N-CoT
        "executor": executor,
        # Hydra's runtime choices, group -> option: the conf/<group>/<option>.yaml files that composed the cell
        # (auto-selected ones included, e.g. scale: tiny); null = no file of that group was used
        "hydra_choices": dict(sorted(cfg.choices.items())),
        "config": OmegaConf.to_container(cfg.raw, resolve=True),
    }


def write_record(path: Path, record: dict[str, Any]) -> None:
    atomic_write_json(path, record)


def read_record(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(f"{path}: not a valid results record ({err}); delete it or re-run the cell with "
                          f"overwrite=true") from None
    if not isinstance(rec, dict):
        raise RecordError(f"{path}: not a valid results record (a JSON {type(rec).__name__}, expected an "
                          f"object)")
    version = rec.get("record_version")
    if version != RECORD_VERSION:
        raise RecordError(f"{path}: results record version {version!r}, this reft_exp reads version "
                          f"{RECORD_VERSION}; re-run the cell (overwrite=true), point paths.results_dir to a "
                          f"new folder or use a matching reft_exp version")
    return rec
