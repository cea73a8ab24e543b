"""Model checkpoints, written atomically: saved into a temp folder beside the target, with a manifest of every
file's size and sha256, then renamed, so a reader never sees a half-written checkpoint and detects a damaged one
(docs/reliability.md). The manifest functions also seal the runner's training states (reft_exp/runner.py)."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


def save_model(accelerator, model, tokenizer, folder: str | Path, dtype: str | None = None) -> None:
    """Save a (possibly wrapped/sharded) model and its tokenizer to ``folder`` via temp folder + rename.
    ``dtype``: the floating-point weights are written in it (the configured ``model.dtype``: a model trained on
    float32 master weights is saved as the official bf16 runs save theirs); None = as they are.

    Every process must call this (gathering a sharded state dict is collective); only the main one writes.
    """
    from reft_exp.models import DTYPES

    folder = Path(folder)
    state_dict = accelerator.get_state_dict(model)
    if dtype is not None and state_dict is not None:
        state_dict = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in state_dict.items()}
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


MODEL_MANIFEST_FILE = "reft_manifest.json"  # size and sha256 of every file of a saved model (best/, epoch_<n>/)


class CorruptStateError(RuntimeError):
    """A saved training state that fails its checksum or does not load."""


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


def verify_model(folder: str | Path) -> None:
    """A saved model folder is present and matches its manifest. Folders saved before manifests existed
    (no manifest file) only need to exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CorruptStateError(f"{folder}: missing")
    if (folder / MODEL_MANIFEST_FILE).exists():
        verify_manifest(folder, MODEL_MANIFEST_FILE)
