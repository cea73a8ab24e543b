"""Metric trackers: ``logger=none`` (console + results record) and ``logger=wandb`` (optional package).

``logger=wandb`` logs each grid cell as one W&B run:

* group: ``logger.group`` if set, else the Hydra sweep folder of a ``--multirun`` (one group per sweep),
  else none;
* tags: ``logger.tags`` plus the cell's grid coordinates (``model=tiny``, ``method=reft``, ...) and its
  variant ``tag=...`` if any; job type = the method;
* metrics: whatever the methods log per step / per epoch (``sft/loss``, ``reft/score``, ``reft/kl``, ...)
  and the cell's accuracy in the run summary.

Mode: ``WANDB_MODE`` in the environment wins over ``logger.mode`` (so ``WANDB_MODE=disabled`` switches W&B
off everywhere). ``online`` without an API key (``WANDB_API_KEY`` or a ``~/.netrc`` entry for the W&B host),
or when W&B cannot be reached, falls back to ``offline``: the run is written under ``$WANDB_DIR/wandb/
offline-run-*`` and can be uploaded later with ``wandb sync``. Without the wandb package the metrics go to
the results record only. Each fallback is reported once per process, not once per cell.
"""

from __future__ import annotations

import logging
import netrc
import os
from typing import Any
from urllib.parse import urlparse

from reft_exp.config import LoggerConfig

log = logging.getLogger(__name__)
MODES = ("online", "offline", "disabled")
_said: set[str] = set()  # fallback messages already given in this process


def warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time it is given in this process only."""
    if message not in _said:
        _said.add(message)
        log.warning(message)


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
        offline = self.run.settings.mode == "offline"
        run_dir = os.path.dirname(self.run.dir)
        self.run.finish()
        if offline:
            log.info("W&B offline run written to %s (upload: `wandb sync %s`)", run_dir, run_dir)


def has_api_key() -> bool:
    """Whether a W&B API key is available (environment or a netrc entry for the W&B host)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(configured: str) -> str:
    """The W&B mode to use: ``WANDB_MODE`` if set, else ``configured``; online needs an API key."""
    mode = os.environ.get("WANDB_MODE") or configured
    if mode not in MODES:
        raise ValueError(f"W&B mode {mode!r}: expected one of {MODES} (logger.mode or WANDB_MODE)")
    if mode == "online" and not has_api_key():
        warn_once("logger=wandb: no W&B API key found, logging offline (upload later with `wandb sync`)")
        mode = "offline"
    return mode


def default_group() -> str | None:
    """The Hydra sweep folder of a ``--multirun`` job (one W&B group per sweep), else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return str(hc.sweep.dir)[-128:]  # W&B's limit on a group name


def init_wandb(project: str, entity: str | None, mode: str, group: str | None, name: str | None,
               tags: list[str], config: dict | None = None, job_type: str | None = None) -> Any | None:
    """A W&B run with the fallbacks above, or None when W&B is disabled or not installed."""
    mode = resolve_mode(mode)
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        warn_once("logger=wandb but the wandb package is not installed (pip install 'reft_exp[wandb]'): "
                  "metrics go to the results records and the console only")
        return None
    kwargs = dict(project=project, entity=entity, group=group, name=name, job_type=job_type,
                  tags=[t[:64] for t in tags], config=config, reinit="finish_previous")
    try:
        return wandb.init(mode=mode, **kwargs)
    except Exception as err:  # network or server trouble: keep the run, log it offline
        if mode != "online":
            raise
        warn_once(f"logger=wandb: W&B could not be reached ({type(err).__name__}: {err}); logging offline "
                  "(upload later with `wandb sync`)")
        return wandb.init(mode="offline", **kwargs)


def make_tracker(cfg: LoggerConfig, run_name: str, config: dict, tags: list[str], is_main: bool) -> Tracker:
    if cfg.name == "none" or not is_main:
        return Tracker()
    if cfg.name != "wandb":
        raise ValueError(f"unknown logger {cfg.name!r} (expected none | wandb)")
    tags = list(cfg.tags) + list(tags) + ([f"tag={config['tag']}"] if config.get("tag") else [])
    run = init_wandb(cfg.project, cfg.entity, cfg.mode, cfg.group or default_group(), run_name, tags, config,
                     job_type=(config.get("method") or {}).get("name"))
    return Tracker() if run is None else WandbTracker(run)
