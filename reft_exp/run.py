"""The Hydra app: ``python -m reft_exp.run [overrides]`` runs one grid cell; ``--multirun`` runs a grid.

A cell is (model, dataset, cot, method, inference, seed). It trains (reusing cached stages), measures test
accuracy with the chosen inference mode and writes one results record under ``results/runs/``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from reft_exp.config import ConfigError, HubModelConfig, RunConfig, hydra_error_line, validate

log = logging.getLogger("reft_exp")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the app's config_path below
# Hydra flags that point it at another config tree: the group pre-check below then leaves checking to Hydra.
_OTHER_CONFIG_FLAGS = ("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name",
                       "--experimental-rerun")


def check_group_choices(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Fail with one line for ``group=option`` overrides naming an option that has no YAML file.

    Hydra reports these itself, but as a multi-line block ("Could not find ...", options, search path, a
    HYDRA_FULL_ERROR hint) with exit code 1; this check gives the app's one-line error and exit code 2.
    Anything it does not understand (sweep functions, quoting, interpolations, Hydra's own groups) is left
    to Hydra.
    """
    if any(a.split("=", 1)[0] in _OTHER_CONFIG_FLAGS for a in argv):
        return
    for arg in argv:
        if arg.startswith(("-", "~")) or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+").split("@", 1)[0]
        if key.startswith("hydra") or "." in key or not key or not (conf_dir / key).is_dir():
            continue
        if not value or any(c in value for c in "()[]{}'\"$*?"):
            continue
        options = sorted(f.stem for f in (conf_dir / key).glob("*.yaml"))
        for option in (v.strip() for v in value.split(",")):
            if option != "null" and option not in options:
                raise ConfigError(f"{key}={option}: no such option (conf/{key}/{option}.yaml not found). "
                                  f"Available options: {', '.join(options) or '(none)'}")


def fail(kind: str, err: BaseException) -> None:
    """The app's error exit: one line ``reft_exp: <kind>: <message>`` on stderr, exit code 2."""
    print(f"reft_exp: {kind}: {' '.join(str(err).splitlines())}", file=sys.stderr)
    sys.exit(2)


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
    from reft_exp.methods.sft import saved_epochs

    needs = [f"method={cfg.method.name}"] * (cfg.method.name == "offline_st" or getattr(cfg.method, "init", "") == "warmup")
    needs += [f"inference={cfg.inference.name}"] * (cfg.inference.name == "rerank"
                                                    or getattr(cfg.inference, "checkpoint", "") == "warmup")
    if needs and warmup not in saved_epochs(cfg.sft):
        trained = "sft.epochs" if cfg.sft.train_epochs is None else "sft.train_epochs"
        raise ConfigError(f"{' and '.join(needs)} starts from the SFT warm-up checkpoint of epoch {warmup} "
                          f"(dataset.warmup_epoch.{cfg.cot.name}) but the SFT run keeps epochs "
                          f"{saved_epochs(cfg.sft)} ({trained}={cfg.sft.last_epoch}, sft.save_epochs="
                          f"{cfg.sft.save_epochs})")
    if isinstance(cfg.model, HubModelConfig):
        from reft_exp.models import check_model_path

        try:
            check_model_path(cfg.model.path)
        except FileNotFoundError as err:
            raise ConfigError(f"model.path: {err}") from None


# How to start N processes on CPU: `accelerate launch --cpu` always starts one (its simple launcher, whatever
# --num_processes says), and `--multi_gpu --cpu` is refused; torchrun starts N, which accelerate joins (gloo).
CPU_MULTI_PROCESS_LAUNCH = "torchrun --nproc_per_node N -m reft_exp.run accelerate=cpu ..."


def describe_processes(accelerator) -> dict:
    """World size and distributed type of this run, logged once and stored in the record; a single process
    started by ``accelerate launch --cpu`` (which never starts more) is said, with the launch that does."""
    info = {"world_size": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type.value),
            "process_index": accelerator.process_index}
    if accelerator.is_main_process:
        log.info("processes: %d (%s)", info["world_size"], info["distributed_type"])
        launched_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1")
        if launched_cpu and info["world_size"] == 1 and "WORLD_SIZE" not in os.environ:
            log.warning("accelerate launch --cpu started ONE process (its CPU launcher ignores --num_processes); "
                        "for several CPU processes use: %s", CPU_MULTI_PROCESS_LAUNCH)
    return info


def run_cell(cfg: RunConfig) -> dict:
    """Run one grid cell end to end and return its results record."""
    import torch
    import transformers

    from reft_exp.context import RunContext
    from reft_exp.data import load_splits
    from reft_exp.distributed import build_accelerator
    from reft_exp.engines import make_engine, set_default_engine
    from reft_exp.inference import INFERENCE
    from reft_exp.methods import METHODS
    from reft_exp.prompts import set_header_prompt_end
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
    accelerator = build_accelerator(cfg.accelerate)  # one device, DDP or DeepSpeed ZeRO-2/3
    distributed = describe_processes(accelerator)
    # generation engine of every stage (rollout.engine), computing in the training's mixed precision
    set_default_engine(make_engine(cfg.rollout, cfg.accelerate.mixed_precision))
    set_header_prompt_end(cfg.cot.header_prompt_end)  # where P-CoT header prompts end (cot.header_prompt_end)
    # official: seed + rank (train_sft_model.py:386, train_rl_reft.py:763)
    seed_everything(cfg.root.seed + accelerator.process_index, cfg.root.deterministic)
    start = time.perf_counter()
    tracker = make_tracker(cfg.logger, cell_id(cfg), OmegaConf.to_container(cfg.raw, resolve=True),
                           [f"{k}={v}" for k, v in cfg.coordinates.items()], accelerator.is_main_process)
    ctx = RunContext(cfg=cfg, accelerator=accelerator, splits={}, tracker=tracker)
    try:
        ctx.executor_if_needed  # noqa: B018 - P-CoT: start the sandbox now, so a missing one fails at start
        with ctx.timer("data"):
            ctx.splits = load_splits(cfg.dataset, cfg.cot.name)
        log.info("cell %s: %d train / %d test records", cell_id(cfg), len(ctx.splits["train"]),
                 len(ctx.splits["test"]))
        with ctx.timer("method"):
            method_out = METHODS[cfg.method.name](ctx)
        with ctx.timer("inference"):
            inference_out = INFERENCE[cfg.inference.name](ctx, method_out)
        ctx.timer.seconds["total"] = time.perf_counter() - start
        record = build_record(cfg, method_out, inference_out, ctx.timer.seconds, ctx.stages_used, distributed,
                              ctx.executor_layers, ctx.warmup)
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
        run_cfg = validate(cfg)  # Hydra's runtime choices and overrides name the file behind a bad key
        check_supported(run_cfg)
    except ConfigError as err:
        fail("config error", err)
    from reft_exp.data.upstream import DataError
    from reft_exp.results import RecordError

    try:
        record = run_cell(run_cfg)
    except ConfigError as err:
        fail("config error", err)
    except DataError as err:
        fail("data error", err)
    except RecordError as err:
        fail("results error", err)
    return float(record["accuracy"])


def app() -> None:
    """``python -m reft_exp.run``: every configuration mistake ends in one ``reft_exp: ...`` line, exit 2."""
    try:
        check_group_choices(sys.argv[1:])
    except ConfigError as err:
        fail("config error", err)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the user asked for Hydra's full tracebacks
        main()
        return
    from hydra.errors import CompactHydraException

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises its composition errors instead of printing them
    try:
        main()
    except CompactHydraException as err:
        fail("config error", hydra_error_line(err))


if __name__ == "__main__":
    app()
