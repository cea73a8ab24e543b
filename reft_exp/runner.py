"""One training runner for every method: the epoch loop, evaluation, keep-best, checkpoints, resume, logs.

A method keeps only what is its own (TRL's split, with nanoGPT-style bodies): it builds its models and
optimizer, prepares them with the accelerator, and implements a :class:`Task`: the batches of an epoch, one
``step``, ``evaluate`` and ``save_model``. :func:`train` owns the rest:

- resume through ``accelerator.save_state`` / ``load_state`` (models, optimizers, schedulers, the RNG of every
  process, and every object registered with ``register_for_checkpointing``: the progress counters and e.g. the
  data-order generator), so DDP and DeepSpeed ZeRO runs resume the same way; the newest ``keep`` states are kept
  by accelerate's ``ProjectConfiguration(total_limit=...)`` under ``<stage>/last_state/checkpoints/``;
- a sha256 manifest per saved state (written last: a state without one is incomplete) and a fallback to the
  previous state when the newest is damaged (docs/reliability.md);
- per-epoch (and optionally per-step) greedy evaluation, keep-best (``best/``), epoch checkpoints the grid asks
  for (``epoch_<n>/``), ``metrics.json``, the per-step stats file and the tracker.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from reft_exp.checkpoint import CorruptStateError, verify_manifest, write_manifest
from reft_exp.distributed import uses_deepspeed
from reft_exp.stages import Stage, run_stage, stage_key
from reft_exp.utils import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl

log = logging.getLogger(__name__)

STATE_DIR = "last_state"  # resumable training state of a stage (deleted when the stage is complete)
CHECKPOINTS_DIR = "checkpoints"  # accelerate's automatic checkpoint naming: checkpoints/checkpoint_<i>
PROGRESS_FILE = "progress.json"  # the counters of a state; at the state folder's top: the newest complete one
MANIFEST_FILE = "manifest.json"  # sha256 and size of every file of a saved state, written last
METRICS_FILE = "metrics.json"
OUTPUTS_DIR = "outputs"  # what the model wrote: eval_epoch<n>.jsonl / eval_step<n>.jsonl, rollouts_epoch<n>.jsonl
STEPS_FILE = "steps.jsonl"  # one JSON line of stats per optimizer step (RL methods)
TIED_OUTPUT_LAYER = "lm_head.weight"  # a tied output layer, saved once in a training state (_not_tied_weights_notice)


# ------------------------------------------------------------------------------------------ state on disk
class GeneratorState:
    """A ``torch.Generator`` (e.g. a data order) as an object ``register_for_checkpointing`` accepts."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])


class Progress:
    """Epoch, step, per-epoch history and best so far; saved with every state (registered for checkpointing)."""

    def __init__(self) -> None:
        self.epoch, self.step = 0, 0
        self.epochs: list[dict] = []
        self.evals: list[dict] = []  # step-based evaluations (Schedule.eval_every_steps)
        self.best: dict[str, Any] = {"accuracy": -1.0, "epoch": None, "step": None}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "epochs": self.epochs, "evals": self.evals,
                "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step = state["epoch"], state["step"]
        self.epochs, self.evals, self.best = state["epochs"], state.get("evals", []), state["best"]


def _not_tied_weights_notice(record: logging.LogRecord) -> bool:
    """False for accelerate's "Removed shared tensor {'lm_head.weight'} while saving" when every removed tensor is an
    output layer: a model whose output layer is its input embedding (the tiny model, SmolLM2) stores it once and
    loading ties it again (the resume tests reload such states), so at every epoch's save the warning said
    nothing. Any other shared tensor is still reported."""
    found = re.search(r"Removed shared tensor \{([^}]*)\}", record.getMessage())  # after accelerate's "[RANK 0] "
    names = re.findall(r"'([^']+)'", found.group(1)) if found else []
    return not (names and all(n.endswith(TIED_OUTPUT_LAYER) for n in names))


@contextmanager
def _quiet_accelerate() -> Iterator[None]:
    """accelerate logs every file of a save/load at INFO and its checkpoint rotation as a WARNING: our own log
    says what was saved or resumed, once."""
    loggers = [logging.getLogger(name) for name in ("accelerate.accelerator", "accelerate.checkpointing")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    tensors = logging.getLogger("accelerate.utils.other")
    tensors.addFilter(_not_tied_weights_notice)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        tensors.removeFilter(_not_tied_weights_notice)


def _index(folder: Path) -> int:
    return int(re.findall(r"(\d+)$", folder.name)[0])


class TrainState:
    """The resumable state of one training run, in ``folder`` (``<stage>/last_state``).

    ``save`` writes ``checkpoints/checkpoint_<i>/`` through ``accelerator.save_state`` (accelerate keeps the
    newest ``keep``, ``ProjectConfiguration.total_limit``), then its manifest, then the top ``progress.json``.
    ``load`` restores the newest state whose manifest verifies, falling back to older ones with a warning."""

    def __init__(self, accelerator, folder: Path, objects: Iterable[Any] = (), keep: int = 2):
        self.acc, self.folder, self.keep = accelerator, Path(folder), keep
        self.progress = Progress()
        self.objects = [self.progress, *objects]
        self.unusable: set[Path] = set()  # states load() found damaged: removed before the next save
        accelerator.register_for_checkpointing(*self.objects)

    @property
    def checkpoints(self) -> list[Path]:
        """Saved states, oldest first."""
        root = self.folder / CHECKPOINTS_DIR
        return sorted((p for p in root.glob("checkpoint_*") if p.is_dir()), key=_index) if root.is_dir() else []

    def _verified(self, folder: Path) -> str | None:
        """None if ``folder`` is a complete, intact state saved by as many processes; else the problem."""
        problem = [None]
        if self.acc.is_main_process:  # one process reads and hashes; all decide alike
            try:
                manifest = verify_manifest(folder, MANIFEST_FILE)
                saved_by = manifest.get("num_processes")
                if saved_by != self.acc.num_processes:
                    if uses_deepspeed(self.acc):  # ZeRO shards optimizer state per rank
                        problem[0] = (f"{folder}: saved by {saved_by} processes under DeepSpeed, this run has "
                                      f"{self.acc.num_processes} (ZeRO states resume on the same process count)")
                    else:
                        log.warning("%s was saved by %s processes, this run has %d: weights, optimizer, schedule "
                                    "and data order carry over; the RNG streams of processes the save did not "
                                    "have start from the seed", folder, saved_by, self.acc.num_processes)
            except CorruptStateError as err:
                problem[0] = str(err)
        if self.acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(problem, from_process=0)
        return problem[0]

    def load(self) -> bool:
        """Restore the newest usable state; False when there is none (training starts from the beginning)."""
        candidates = list(reversed(self.checkpoints))
        for i, folder in enumerate(candidates):
            problem = self._verified(folder)
            if problem is None:
                try:
                    with _quiet_accelerate():
                        self.acc.load_state(str(folder))
                except Exception as err:  # a file that passed its checksum but still does not load
                    problem = f"{folder}: does not load ({type(err).__name__}: {err})"
            if problem is None:
                if i > 0:
                    log.warning("resuming from the previous training state %s", folder)
                return True
            self.unusable.add(folder)
            fallback = (f"falling back to {candidates[i + 1]}" if i + 1 < len(candidates)
                        else "no usable earlier state: training restarts from the beginning")
            log.warning("training state unusable: %s; %s", " ".join(problem.splitlines()), fallback)
        if candidates:
            self.progress.__init__()  # a failed load may have restored part of the counters
        return False

    def save(self) -> None:
        """Every process must call this (saving a sharded model is collective)."""
        from accelerate.utils import ProjectConfiguration

        acc = self.acc
        if acc.is_main_process:  # damaged states, and those cut short (no manifest), must not count towards
            for folder in self.checkpoints:  # total_limit: the rotation would delete a good one instead
                if folder in self.unusable or not (folder / MANIFEST_FILE).exists():
                    shutil.rmtree(folder, ignore_errors=True)
        acc.wait_for_everyone()
        done = self.checkpoints
        before = acc.project_configuration
        acc.project_configuration = ProjectConfiguration(
            project_dir=str(self.folder), automatic_checkpoint_naming=True, total_limit=self.keep,
            iteration=_index(done[-1]) + 1 if done else 0)
        try:
            with _quiet_accelerate():
                acc.save_state()
        finally:
            acc.project_configuration = before
        newest = self.checkpoints[-1]
        acc.wait_for_everyone()
        if acc.is_main_process:
            (newest / PROGRESS_FILE).write_text(json.dumps(self.progress.state_dict(), indent=1, default=str))
            write_manifest(newest, MANIFEST_FILE, num_processes=acc.num_processes)
            atomic_write_json(self.folder / PROGRESS_FILE, {"checkpoint": newest.name}
                              | self.progress.state_dict())
        acc.wait_for_everyone()

    def close(self) -> None:
        """Unregister this run's objects (the accelerator outlives it: the next stage registers its own)."""
        self.acc._custom_objects[:] = [o for o in self.acc._custom_objects if all(o is not x for x in self.objects)]

    def remove(self) -> None:
        """Delete the state (once its stage is complete: at 7B a state is the model plus AdamW moments)."""
        if self.acc.is_main_process:
            shutil.rmtree(self.folder, ignore_errors=True)


def remove_state(stage_dir: Path) -> None:
    shutil.rmtree(Path(stage_dir) / STATE_DIR, ignore_errors=True)


def stage_of(ctx, kind: str, reads: Sequence[str], upstream: dict[str, str]) -> Stage:
    """The stage (folder and key) of a training run of this cell; nothing is computed."""
    cfg = ctx.cfg
    return Stage(ctx.cache_dir, kind, f"{cfg.model.name}_{cfg.dataset.name}_{ctx.cot}_s{cfg.root.seed}",
                 stage_key(cfg, reads, upstream))


def training_stage(ctx, kind: str, reads: Sequence[str], upstream: dict[str, str],
                   compute: Callable[[Path], dict], verify: Callable[[Path], None] | None = None) -> tuple[Stage, dict]:
    """A training run as a cached stage of this cell (``<cache>/<kind>/<model>_<dataset>_<cot>_s<seed>-<hash>``):
    keyed by :func:`reft_exp.stages.stage_key` (its upstream outputs + the config nodes it ``reads``), computed
    once under the stage lock, seeded at its start, its resumable state dropped once complete, noted in the
    cell's record. Returns the stage and its metrics (the completion marker)."""
    stage = stage_of(ctx, kind, reads, upstream)
    reused = run_stage(stage, ctx.accelerator, compute, verify, seed=ctx.cfg.root.seed)
    if not reused and ctx.accelerator.is_main_process:
        remove_state(stage.dir)  # the stage is complete: its resumable state is dead weight
    ctx.note_stage(stage, reused)
    return stage, stage.meta()


# ------------------------------------------------------------------------------------------------ the loop
@dataclass(frozen=True)
class Schedule:
    """What the runner does around a method's steps (every value comes from the method's config node)."""

    desc: str  # "sft", "reft", ...: log prefix, tracker namespace, progress bar
    epochs: int  # the last epoch this run trains
    schedule_epochs: int | None = None  # the epochs of the lr schedule, shown in the progress bar (SFT)
    eval_every_epochs: int | None = 1  # None: no per-epoch evaluation (step-based runs)
    eval_every_steps: int | None = None  # evaluate every N optimizer steps (offline self-training)
    eval_init: bool = False  # evaluate the initial model as epoch 0 (the RL methods: the warm-up)
    best_counts_init: bool = False  # may epoch 0 be the best? (no: train_rl_reft.py:854 starts best at -1)
    save_best: bool = True
    save_epochs: Collection[int] = ()  # epochs whose model is kept as epoch_<n>/ (the warm-up checkpoints)
    log_every_steps: int = 1
    steps_file: bool = False  # write steps.jsonl
    progress_bar: bool = True
    keep_states: int = 2  # resumable states kept (the newest and its fallback)


class Task:
    """A method's own part of a training run. Subclasses set ``objects`` (extra stateful objects to save with
    the state, e.g. a :class:`GeneratorState`) and implement the four methods."""

    objects: tuple = ()
    outputs_dir: Path | None = None  # set by the runner: where a task may write what the model wrote

    def batches(self, epoch: int) -> Iterable:
        """The epoch's batches (their order must be a function of the seed and the epoch, or of a registered
        generator, so a resumed run sees the same)."""
        raise NotImplementedError

    def step(self, batch) -> tuple[dict[str, float], bool]:
        """One forward/backward (and optimizer step): its scalar stats and whether an optimizer step was taken."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        """Greedy test metrics of the current model, at least ``test_accuracy``; an ``outputs`` entry (a list
        of rows: question, completion, extracted answer, gold, correct) is written to ``outputs/`` instead of
        the metrics, so a reader can see what the model wrote at each evaluation."""
        raise NotImplementedError

    def evaluate_initial(self) -> dict[str, Any]:
        """Epoch 0 (``Schedule.eval_init``): the initial model's metrics, as :meth:`evaluate` unless the task can
        reuse them (the RL methods: a cached evaluation of their warm-up checkpoint)."""
        return self.evaluate()

    def save_model(self, folder: Path) -> None:
        raise NotImplementedError

    def epoch_summary(self, stats: list[dict[str, float]], seconds: float) -> dict[str, float]:
        """The epoch's row from its steps' stats: the mean of each (override to add throughput, last lr...)."""
        keys = dict.fromkeys(k for s in stats for k in s)
        return {k: sum(s[k] for s in stats if k in s) / max(sum(k in s for s in stats), 1) for k in keys}

    def finish(self, out_dir: Path, progress: Progress) -> None:
        """After the last epoch, before the state is dropped (e.g. ReFT saves its value head beside best/)."""


def train(ctx, out_dir: Path, sched: Schedule, task: Task) -> dict[str, Any]:
    """Run (or resume) ``task`` for ``sched.epochs`` epochs; returns the run's metrics for the stage marker."""
    acc, cfg = ctx.accelerator, ctx.cfg
    out_dir = Path(out_dir)
    state = TrainState(acc, out_dir / STATE_DIR, task.objects, keep=sched.keep_states)
    p = state.progress
    main = acc.is_main_process
    try:
        if state.load():
            log.info("%s: resuming after epoch %d (step %d) from %s", sched.desc, p.epoch, p.step, state.folder)
        elif sched.eval_init:
            row = {"epoch": 0, "step": 0} | _evaluation(ctx, task, sched, out_dir, "eval_epoch0", initial=True)
            p.epochs.append(row)
            log.info("%s: initial greedy test accuracy %.4f", sched.desc, row["test_accuracy"])
            if sched.best_counts_init:
                _keep_best(task, sched, p, out_dir, row["test_accuracy"], epoch=0, step=0)
        steps_log = _StepsLog(out_dir / STEPS_FILE, p.step, main) if sched.steps_file else None
        task.outputs_dir = out_dir / OUTPUTS_DIR
        show = sched.progress_bar and cfg.root.progress and main
        for epoch in range(p.epoch + 1, sched.epochs + 1):
            stats, start = [], time.perf_counter()
            bar = tqdm(task.batches(epoch), desc=f"{sched.desc} epoch {epoch}/{sched.schedule_epochs or sched.epochs}",
                       disable=not show)
            with ctx.timer(f"{sched.desc}_train"):
                for batch in bar:
                    s, stepped = task.step(batch)
                    stats.append(s)
                    if not stepped:
                        continue
                    p.step += 1
                    if steps_log is not None:
                        steps_log.append(epoch, p.step, s)
                    if p.step % sched.log_every_steps == 0:
                        ctx.tracker.log({f"{sched.desc}/{k}": v for k, v in s.items()}, p.step)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in list(s.items())[:2]})
                    if sched.eval_every_steps and p.step % sched.eval_every_steps == 0:
                        _evaluate_at_step(ctx, task, sched, p, out_dir, epoch)
            row = {"epoch": epoch, "step": p.step} | task.epoch_summary(stats, time.perf_counter() - start)
            if sched.eval_every_epochs and (epoch % sched.eval_every_epochs == 0 or epoch == sched.epochs):
                row |= _evaluation(ctx, task, sched, out_dir, f"eval_epoch{epoch}")
                _keep_best(task, sched, p, out_dir, row["test_accuracy"], epoch=epoch, step=p.step)
            if epoch in sched.save_epochs:
                task.save_model(out_dir / f"epoch_{epoch}")
            p.epochs.append(row)
            p.epoch = epoch
            ctx.tracker.log({f"{sched.desc}/epoch_{k}": v for k, v in row.items() if k != "epoch"}
                            | {"epoch": epoch}, p.step)
            log.info("%s epoch %d: %s", sched.desc, epoch,
                     " ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "step")
                              and isinstance(v, float) and math.isfinite(v)))
            if main:
                atomic_write_json(out_dir / METRICS_FILE, {"epochs": p.epochs, "evals": p.evals, "best": p.best})
            state.save()
        task.finish(out_dir, p)
    finally:
        state.close()
        acc.free_memory()  # drop the accelerator's references to this run's models, optimizer, loader
        acc.gradient_accumulation_steps = 1
    evaluated = sorted((r for r in p.epochs + p.evals if "test_accuracy" in r), key=lambda r: r["step"])
    out = {"epochs": p.epochs, "best_accuracy": p.best["accuracy"], "best_epoch": p.best["epoch"],
           "best_step": p.best["step"], "final_accuracy": evaluated[-1]["test_accuracy"] if evaluated else None,
           "steps": p.step}
    if p.evals:
        out["evals"] = p.evals
    if sched.eval_init and p.epochs and p.epochs[0]["epoch"] == 0:
        out["warmup_accuracy"] = p.epochs[0]["test_accuracy"]
    if steps_log is not None:
        out["steps_file"] = str(steps_log.path)
    return out


def _evaluation(ctx, task: Task, sched: Schedule, out_dir: Path, name: str, initial: bool = False) -> dict[str, Any]:
    """``task.evaluate()`` (``task.evaluate_initial()`` for epoch 0) timed; its ``outputs`` rows go to
    ``outputs/<name>.jsonl``, the metrics are returned."""
    with ctx.timer(f"{sched.desc}_eval"):
        metrics = task.evaluate_initial() if initial else task.evaluate()
    rows = metrics.pop("outputs", None)
    if rows is not None and ctx.accelerator.is_main_process:
        write_jsonl(out_dir / OUTPUTS_DIR / f"{name}.jsonl", rows)
    return metrics


def _keep_best(task: Task, sched: Schedule, p: Progress, out_dir: Path, accuracy: float, epoch: int,
               step: int) -> None:
    if accuracy > p.best["accuracy"]:
        p.best = {"accuracy": accuracy, "epoch": epoch, "step": step}
        if sched.save_best:
            task.save_model(out_dir / "best")


def _evaluate_at_step(ctx, task: Task, sched: Schedule, p: Progress, out_dir: Path, epoch: int) -> None:
    row = {"epoch": epoch, "step": p.step} | _evaluation(ctx, task, sched, out_dir, f"eval_step{p.step}")
    p.evals.append(row)
    log.info("%s step %d: test accuracy %.4f", sched.desc, p.step, row["test_accuracy"])
    ctx.tracker.log({f"{sched.desc}/step_test_accuracy": row["test_accuracy"]}, p.step)
    _keep_best(task, sched, p, out_dir, row["test_accuracy"], epoch=epoch, step=p.step)


class _StepsLog:
    """``steps.jsonl``: on (re)start the steps logged after the resume point are dropped (they are redone)."""

    def __init__(self, path: Path, resume_step: int, is_main: bool):
        self.path, self.is_main = path, is_main
        if is_main:
            kept = [row for row in (read_jsonl(path) if path.exists() else []) if row["step"] <= resume_step]
            atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))

    def append(self, epoch: int, step: int, stats: dict) -> None:
        if self.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps({"epoch": epoch, "step": step} | stats) + "\n")


def read_steps(path: str | Path) -> list[dict]:
    """The per-step stats of a run (``steps.jsonl``)."""
    return read_jsonl(path)
