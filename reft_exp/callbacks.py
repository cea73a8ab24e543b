"""Hydra callbacks: at the end of a sweep, rebuild Table 1 / Table 2 and the plots from every record in the
results folder (``python -m reft_exp.tables`` does the same by hand), and for ``experiment=claims`` the claims
report (``python -m reft_exp.claims``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("reft_exp")


class BuildTables(Callback):
    def __init__(self, enabled: bool = True, plots: bool = True):
        self.enabled, self.plots = enabled, plots

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        from reft_exp.tables import main as tables_main

        runs = Path(config.paths.runs_dir)
        out = Path(config.paths.results_dir) / "tables"
        if not runs.is_dir():
            log.warning("sweep finished without results records under %s: no tables built", runs)
            return
        try:
            paths = tables_main(["--runs", str(runs), "--out", str(out), *([] if self.plots else ["--no-plots"])])
        except Exception as err:  # the sweep's records are safe; a table problem must not fail the sweep
            log.warning("sweep finished but building the tables failed: %s (run python -m reft_exp.tables)", err)
            return
        log.info("tables and plots rebuilt from %s: %s", runs, ", ".join(str(p) for p in paths[:2]) + ", ...")


class BuildClaims(Callback):
    """At the end of ``experiment=claims``: the claims report (reft_exp/claims.py) from the sweep's runs folder."""

    def __init__(self, enabled: bool = True, tag: str = "", kl_bound: float | None = None,
                 std_margin: float | None = None):  # None: reft_exp.claims' defaults
        self.enabled, self.tag, self.kl_bound, self.std_margin = enabled, tag, kl_bound, std_margin

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        from reft_exp.claims import main as claims_main

        args = ["--runs", str(config.paths.runs_dir), "--out", str(config.paths.results_dir), "--tag", self.tag]
        args += ["--kl-bound", str(self.kl_bound)] if self.kl_bound is not None else []
        args += ["--std-margin", str(self.std_margin)] if self.std_margin is not None else []
        try:
            paths = claims_main(args)
        except Exception as err:  # the records are safe; a report problem must not fail the sweep
            log.warning("sweep finished but building the claims report failed: %s (run python -m reft_exp.claims "
                        "%s)", err, " ".join(args))
            return
        log.info("claims report: %s", ", ".join(map(str, paths)))
