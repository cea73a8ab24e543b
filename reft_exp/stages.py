"""Stage cache: each stage (tiny model, SFT run, ...) lives once in a folder keyed by a hash of exactly the
config that determines it, with a completion marker. Cells that share a stage reuse it; concurrent jobs
that need the same stage wait on a file lock instead of computing it twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from reft_exp.utils import atomic_write_json, preserved_rng, seed_everything

log = logging.getLogger(__name__)
DONE_MARKER = "STAGE_DONE.json"
# Bump when a stage's on-disk layout or semantics change, so old caches are not reused silently.
STAGE_FORMAT_VERSION = 2  # 2: the tiny tokenizer isolates newlines


def _plain(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj) if f.metadata.get("stage_key", True)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def config_hash(key: dict[str, Any]) -> str:
    blob = json.dumps(_plain(key), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def config_at(cfg: Any, path: str) -> Any:
    """``cfg.<path>`` for a dotted path of a typed config (``"sft"``, ``"accelerate.mixed_precision"``)."""
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def stage_key(cfg: Any, reads: Sequence[str], upstream: dict[str, str] | None = None,
              node: Any = None) -> dict[str, Any]:
    """The one rule for stage keys: the outputs of the upstream stages it starts from (``stage hash`` or
    ``stage hash/output``) plus exactly the config nodes the stage reads (dotted paths into the typed config,
    each node whole, minus its fields marked :data:`reft_exp.config.NOT_IN_KEY`: those choose among a stage's
    outputs, e.g. ``dataset.warmup_epoch``, or do not change them, e.g. worker counts). Each stage kind declares
    its ``reads`` once. ``node``: the stage's own settings when a consumer hands them over (the samples stage
    reads whichever sampling node asked for it: ``inference.sampling``, ``method.sampling``, ...)."""
    key = {"upstream": dict(upstream or {}), "config": {path: _plain(config_at(cfg, path)) for path in reads}}
    if node is not None:
        key["node"] = _plain(node)
    return key


def checkpoint_id(checkpoint: str | Path) -> str:
    """``<stage folder>/<checkpoint>``: the stage folder name ends with the hash of its config."""
    p = Path(checkpoint)
    return f"{p.parent.name}/{p.name}"


class Stage:
    """A cached stage folder: ``<cache>/<kind>/<label>-<hash>/``."""

    def __init__(self, cache_dir: str | Path, kind: str, label: str, key: dict[str, Any]):
        self.key = {"stage_format": STAGE_FORMAT_VERSION, "kind": kind, **key}
        self.hash = config_hash(self.key)
        self.dir = Path(cache_dir) / kind / f"{label}-{self.hash}"
        self.kind = kind

    @property
    def done(self) -> bool:
        """The completion marker exists and reads; an unreadable one (damaged by hand or disk) counts as not
        done, with a warning, so the stage is computed again (resuming from its training state if any)."""
        marker = self.dir / DONE_MARKER
        if not marker.exists():
            return False
        try:
            json.loads(marker.read_text())
        except (OSError, ValueError) as err:
            log.warning("stage %s: unreadable completion marker %s (%s); computing the stage again",
                        self.kind, marker, err)
            return False
        return True

    def meta(self) -> dict[str, Any]:
        return json.loads((self.dir / DONE_MARKER).read_text())

    def mark_done(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.dir / DONE_MARKER, meta)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive while a job computes this stage; another job needing it blocks here."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.dir) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("stage %s is being computed by another job (%s); waiting for it", self.kind, self.dir)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def prepare(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.dir / "stage_key.json", self.key)
        return self.dir


def _verified(stage: Stage, verify: Callable[[Path], None]) -> bool:
    try:
        verify(stage.dir)
    except Exception as err:  # whatever the check found, the stage cannot be reused as it is
        log.warning("stage %s is complete but unusable (%s); computing it again", stage.kind,
                    " ".join(str(err).splitlines()))
        return False  # the marker stays until the new one replaces it: readers never find none
    return True


def run_stage(stage: Stage, accelerator, compute: Callable[[Path], dict[str, Any]],
              verify: Callable[[Path], None] | None = None, seed: int | None = None) -> bool:
    """Compute ``stage`` unless complete; returns True when it was reused.

    ``verify(folder)`` checks a complete stage's files (e.g. checkpoint checksums) before reuse; if it raises,
    the stage is computed again, with a warning.

    ``seed``: the stage seeds every RNG with ``seed + process index`` before it computes, as each official
    script does at its start (``set_seed(args['seed'] + accelerator.process_index)``, train_sft_model.py:386,
    train_rl_reft.py:763, train_rl_sl.py:557, train_sl_model.py:426, train_reward_model.py:318), so a stage's
    numbers do not depend on what the process ran before it (e.g. an SFT run computed or read from the cache).
    Seeded or not, after ``compute`` every RNG is put back as it was, so a stage computed inside another one's
    ``compute`` (the reranker's training samples, which seed their own draws) leaves the outer stage's draws
    as they are when that stage is read from the cache instead.

    The main process holds the stage's file lock for the whole computation, so another job needing the
    same stage waits and then reuses it. Every process runs ``compute`` (training is collective); the
    main process's view of the completion marker is broadcast so all processes decide alike.
    """
    from contextlib import nullcontext

    from accelerate.utils import broadcast_object_list

    main = accelerator is None or accelerator.is_main_process
    multi = accelerator is not None and accelerator.num_processes > 1
    with stage.lock() if main else nullcontext():
        if multi:
            accelerator.wait_for_everyone()
        decision = [stage.done and (verify is None or _verified(stage, verify))] if main else [None]
        if multi:
            broadcast_object_list(decision, from_process=0)
        if decision[0]:
            return True
        folder = stage.prepare() if main else stage.dir
        if multi:
            accelerator.wait_for_everyone()
        with preserved_rng():
            if seed is not None:
                seed_everything(seed + (accelerator.process_index if accelerator is not None else 0))
            meta = compute(folder)
        if multi:
            accelerator.wait_for_everyone()
        if main:
            stage.mark_done(meta)
            log.info("stage %s complete: %s", stage.kind, stage.dir)
        if multi:
            accelerator.wait_for_everyone()
    return False
