"""Model checkpoints and resumable training states, written atomically: saved into a temp folder beside the
target, with a manifest of every file's size and sha256, then renamed, so a reader (or a resumed run) never
sees a half-written checkpoint and detects a damaged one (docs/reliability.md)."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


def save_model(accelerator, model, tokenizer, folder: str | Path) -> None:
    """Save a (possibly wrapped/sharded) model and its tokenizer to ``folder`` via temp folder + rename.

    Every process must call this (gathering a sharded state dict is collective); only the main one writes.
    """
    folder = Path(folder)
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
        accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, MODEL_MANIFEST_FILE)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


TRAIN_STATE_FILE = "train_state.pt"
MANIFEST_FILE = "manifest.json"  # sha256 and size of every file of a training state, written last
MODEL_MANIFEST_FILE = "reft_manifest.json"  # the same for a saved model folder (best/, warmup/)
PREVIOUS_SUFFIX = ".prev"  # the state before the latest one: ``last_state`` -> ``last_state.prev``


class CorruptStateError(RuntimeError):
    """A saved training state that fails its checksum or does not load."""


def previous_state_dir(folder: str | Path) -> Path:
    """Where the state before the latest one is kept (the fallback when the latest is corrupt)."""
    folder = Path(folder)
    return folder.with_name(folder.name + PREVIOUS_SUFFIX)


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _rng_state(generators: dict | None = None) -> dict:
    import random

    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "generators": {name: g.get_state() for name, g in (generators or {}).items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generators: dict | None = None) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        g.set_state(state["generators"][name])


def save_train_state(accelerator, folder: str | Path, model, optimizer, progress: dict, scheduler=None,
                     generators: dict | None = None) -> None:
    """Everything needed to resume exactly: weights, optimizer, LR scheduler, every process's RNG (global
    generators plus the named ``generators``, e.g. the data loader's), and the ``progress`` counters.

    Written into a temp folder with a checksum manifest written last, then rotated in: the state it replaces
    becomes ``<folder>.prev`` (the fallback if the new one turns out corrupt) and the one before is deleted.
    A kill at any point leaves the latest or the previous complete state in place.
    Every process must call this (it gathers the state dict; each process writes its own RNG file).
    """
    import json

    import torch

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    torch.save(_rng_state(generators), tmp / f"rng_{accelerator.process_index}.pt")
    if main:
        torch.save({"model": state_dict, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None},
                   tmp / TRAIN_STATE_FILE)
        (tmp / "progress.json").write_text(json.dumps(progress, indent=1, default=str))
    accelerator.wait_for_everyone()
    if main:
        write_manifest(tmp, MANIFEST_FILE, num_processes=accelerator.num_processes)
        prev = previous_state_dir(folder)
        if folder.exists():
            if prev.exists():
                trash = folder.with_name(f".{prev.name}.trash-{uuid.uuid4().hex[:8]}")
                prev.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            folder.rename(prev)
        tmp.rename(folder)
    accelerator.wait_for_everyone()


def write_manifest(folder: Path, name: str, **extra) -> None:
    """``folder/name``: size and sha256 of every file in ``folder`` (written last, atomically)."""
    from reft_exp.utils import atomic_write_json

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != name)
    atomic_write_json(folder / name, {**extra, "files": {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}})


def verify_manifest(folder: str | Path, name: str) -> dict:
    """Check ``folder`` against its manifest ``name`` (every file present, same size and sha256); returns the
    manifest. Raises :class:`CorruptStateError` with one line naming the folder or the bad file."""
    import json

    folder = Path(folder)
    try:
        manifest = json.loads((folder / name).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptStateError(f"{folder}: no readable {name} ({type(err).__name__}: {err})") from None
    for rel, want in files.items():
        path = folder / rel
        if not path.is_file():
            raise CorruptStateError(f"{path}: missing")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise CorruptStateError(f"{path}: {size} bytes, expected {want['bytes']} (truncated?)")
        if _sha256(path) != want["sha256"]:
            raise CorruptStateError(f"{path}: checksum mismatch (corrupt)")
    return manifest


def verify_train_state(folder: str | Path, num_processes: int | None = None) -> dict:
    """:func:`verify_manifest` for a training state, which must also come from as many processes."""
    manifest = verify_manifest(folder, MANIFEST_FILE)
    if num_processes is not None and manifest.get("num_processes") != num_processes:
        raise CorruptStateError(f"{folder}: saved by {manifest.get('num_processes')} processes, this run has "
                                f"{num_processes}")
    return manifest


def verify_model(folder: str | Path) -> None:
    """A saved model folder is present and matches its manifest. Folders saved before manifests existed
    (no manifest file) only need to exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CorruptStateError(f"{folder}: missing")
    if (folder / MODEL_MANIFEST_FILE).exists():
        verify_manifest(folder, MODEL_MANIFEST_FILE)


def _load_one(accelerator, folder: Path, model, optimizer, scheduler, generators) -> dict:
    import json

    import torch

    problem = [None]
    if accelerator.is_main_process:  # one process reads and hashes the files; all decide alike
        try:
            verify_train_state(folder, accelerator.num_processes)
        except CorruptStateError as err:
            problem[0] = str(err)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(problem, from_process=0)
    if problem[0] is not None:
        raise CorruptStateError(problem[0])
    try:
        state = torch.load(folder / TRAIN_STATE_FILE, map_location="cpu", weights_only=False)
        rng = torch.load(folder / f"rng_{accelerator.process_index}.pt", weights_only=False)
        progress = json.loads((folder / "progress.json").read_text())
    except Exception as err:  # a file that passed its checksum but still does not load
        raise CorruptStateError(f"{folder}: does not load ({type(err).__name__}: {err})") from None
    if (scheduler is not None) != (state.get("scheduler") is not None):
        what = "missing" if scheduler is not None else "unexpected"
        raise CorruptStateError(f"{folder}: scheduler state {what}")
    missing = set(generators or {}) - set(rng.get("generators", {}))
    if missing:
        raise CorruptStateError(f"{folder}: the saved RNG state has no generator {sorted(missing)}")
    accelerator.unwrap_model(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(rng, generators)
    return progress


def load_train_state(accelerator, folder: str | Path, model, optimizer, scheduler=None,
                     generators: dict | None = None) -> dict | None:
    """Restore what :func:`save_train_state` wrote and return its ``progress``; None when there is nothing
    to resume from. The latest state is verified (checksums) first; if it is corrupt or missing, the previous
    one (``<folder>.prev``) is used, with a warning; if both are unusable, training restarts (warning)."""
    folder = Path(folder)
    candidates = [p for p in (folder, previous_state_dir(folder)) if p.exists()]
    for i, candidate in enumerate(candidates):
        try:
            progress = _load_one(accelerator, candidate, model, optimizer, scheduler, generators)
        except CorruptStateError as err:
            fallback = (f"falling back to {candidates[i + 1]}" if i + 1 < len(candidates)
                        else "no usable earlier state: training restarts from the beginning")
            log.warning("training state unusable: %s; %s", err, fallback)
            continue
        if candidate != folder:
            log.warning("resuming from the previous training state %s", candidate)
        return progress
    return None


def remove_train_state(folder: str | Path) -> None:
    """Delete a training state, its previous one and any half-written temp folder (once a run is complete)."""
    folder = Path(folder)
    for path in (folder, previous_state_dir(folder), folder.with_name(f".{folder.name}.tmp")):
        shutil.rmtree(path, ignore_errors=True)
