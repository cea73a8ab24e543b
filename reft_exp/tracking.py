"""Metric trackers: ``logger=none`` (console + results record) and ``logger=wandb`` (optional package)."""

from __future__ import annotations

import logging
import os
from typing import Any

from reft_exp.config import LoggerConfig

log = logging.getLogger(__name__)


class Tracker:
    """No-op tracker; metrics still reach the console and the results record."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, run: Any):
        self.run = run

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def finish(self) -> None:
        self.run.finish()


def make_tracker(cfg: LoggerConfig, run_name: str, config: dict, tags: list[str], is_main: bool) -> Tracker:
    if cfg.name == "none" or not is_main:
        return Tracker()
    if cfg.name != "wandb":
        raise ValueError(f"unknown logger {cfg.name!r} (expected none | wandb)")
    try:
        import wandb
    except ImportError:
        log.warning("logger=wandb but the wandb package is not installed: metrics go to the results record only")
        return Tracker()
    mode = cfg.mode
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or os.path.exists(os.path.expanduser("~/.netrc"))):
        log.warning("logger=wandb: no W&B API key found, logging offline (sync later with `wandb sync`)")
        mode = "offline"
    run = wandb.init(project=cfg.project, entity=cfg.entity, mode=mode, group=cfg.group, name=run_name,
                     tags=list(cfg.tags) + tags, config=config, reinit="finish_previous")
    return WandbTracker(run)
