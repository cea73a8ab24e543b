"""The Hydra app: ``python -m reft_exp.run [overrides]`` runs one grid cell; ``--multirun`` runs a grid.

A cell is (model, dataset, cot, method, inference, seed). It trains (reusing cached stages), measures test
accuracy with the chosen inference mode and writes one results record under ``results/runs/``.
"""

from __future__ import annotations

import logging
import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from reft_exp.config import ConfigError, HubModelConfig, RunConfig, validate

log = logging.getLogger("reft_exp")


def check_supported(cfg: RunConfig) -> None:
    """Fail at start, not half-way, for a combination this version cannot run."""
    from reft_exp.inference import INFERENCE
    from reft_exp.methods import METHODS

    if cfg.method.name not in METHODS:
        raise ConfigError(f"method={cfg.method.name} is configured but not implemented yet "
                          f"(available: {sorted(METHODS)})")
    if cfg.inference.name not in INFERENCE:
        raise ConfigError(f"inference={cfg.inference.name} is configured but not implemented yet "
                          f"(available: {sorted(INFERENCE)})")
    warmup = cfg.dataset.warmup_epoch[cfg.cot.name]
    if cfg.method.name != "sft" and getattr(cfg.method, "init", "warmup") == "warmup" and warmup > cfg.sft.epochs:
        raise ConfigError(f"method={cfg.method.name} starts from the SFT warm-up checkpoint of epoch {warmup} "
                          f"(dataset.warmup_epoch.{cfg.cot.name}) but sft.epochs={cfg.sft.epochs}")
    if isinstance(cfg.model, HubModelConfig):
        from reft_exp.models import check_model_path

        try:
            check_model_path(cfg.model.path)
        except FileNotFoundError as err:
            raise ConfigError(f"model.path: {err}") from None


def run_cell(cfg: RunConfig) -> dict:
    """Run one grid cell end to end and return its results record."""
    import torch
    import transformers
    from accelerate import Accelerator

    from reft_exp.context import RunContext
    from reft_exp.data import load_splits
    from reft_exp.inference import INFERENCE
    from reft_exp.methods import METHODS
    from reft_exp.results import build_record, cell_id, config_hash, read_record, record_path, write_record
    from reft_exp.tracking import make_tracker
    from reft_exp.utils import seed_everything

    transformers.utils.logging.disable_progress_bar()  # per-file load/save bars; ours stay
    path = record_path(cfg)
    if path.exists() and not cfg.root.overwrite:
        old = read_record(path)
        if old.get("config_hash") == config_hash(cfg):
            log.info("cell %s already has a results record (%s): skipped (overwrite=true recomputes)",
                     cell_id(cfg), path)
            return old
        log.warning("cell %s: the existing record %s was made with another config; recomputing and replacing "
                    "it (use tag=... to keep both)", cell_id(cfg), path)
    if cfg.root.num_threads:
        torch.set_num_threads(cfg.root.num_threads)
    accelerator = Accelerator(cpu=cfg.accelerate.cpu, mixed_precision=cfg.accelerate.mixed_precision)
    seed_everything(cfg.root.seed + accelerator.process_index, cfg.root.deterministic)  # upstream: seed + rank
    start = time.perf_counter()
    tracker = make_tracker(cfg.logger, cell_id(cfg), OmegaConf.to_container(cfg.raw, resolve=True),
                           [f"{k}={v}" for k, v in cfg.coordinates.items()], accelerator.is_main_process)
    ctx = RunContext(cfg=cfg, accelerator=accelerator, splits={}, tracker=tracker)
    try:
        with ctx.timer("data"):
            ctx.splits = load_splits(cfg.dataset, cfg.cot.name)
        log.info("cell %s: %d train / %d test records", cell_id(cfg), len(ctx.splits["train"]),
                 len(ctx.splits["test"]))
        with ctx.timer("method"):
            method_out = METHODS[cfg.method.name](ctx)
        with ctx.timer("inference"):
            inference_out = INFERENCE[cfg.inference.name](ctx, method_out)
        ctx.timer.seconds["total"] = time.perf_counter() - start
        record = build_record(cfg, method_out, inference_out, ctx.timer.seconds, ctx.stages_used)
        if accelerator.is_main_process:
            write_record(path, record)
            tracker.summary({"accuracy": record["accuracy"]})
        log.info("cell %s: accuracy %.4f (%s) -> %s", cell_id(cfg), record["accuracy"], cfg.inference.name, path)
        return record
    finally:
        ctx.close()
        tracker.finish()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        run_cfg = validate(cfg, dict(HydraConfig.get().runtime.choices))
        check_supported(run_cfg)
    except ConfigError as err:
        print(f"reft_exp: config error: {err}", file=sys.stderr)
        sys.exit(2)
    record = run_cell(run_cfg)
    return float(record["accuracy"])


if __name__ == "__main__":
    main()
