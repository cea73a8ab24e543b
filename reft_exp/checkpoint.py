"""Model checkpoints, written atomically: saved into a temp folder beside the target, then renamed, so a
reader (or a resumed run) never sees a half-written checkpoint."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path


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
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


TRAIN_STATE_FILE = "train_state.pt"


def _rng_state() -> dict:
    import random

    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(accelerator, folder: str | Path, model, optimizer, progress: dict) -> None:
    """Everything needed to resume exactly: weights, optimizer, every process's RNG, progress counters.

    Written atomically (temp file + rename); each process writes its own RNG file."""
    import torch

    from reft_exp.utils import atomic_write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = accelerator.get_state_dict(model)
    rank = accelerator.process_index
    rng_tmp = folder / f".rng_{rank}.pt.tmp"
    torch.save(_rng_state(), rng_tmp)
    rng_tmp.replace(folder / f"rng_{rank}.pt")
    if accelerator.is_main_process:
        tmp = folder / f".{TRAIN_STATE_FILE}.tmp"
        torch.save({"model": state_dict, "optimizer": optimizer.state_dict()}, tmp)
        tmp.replace(folder / TRAIN_STATE_FILE)
        atomic_write_json(folder / "progress.json", progress)
    accelerator.wait_for_everyone()


def load_train_state(accelerator, folder: str | Path, model, optimizer) -> dict | None:
    """Restore what :func:`save_train_state` wrote; None when there is nothing to resume from."""
    import json

    import torch

    folder = Path(folder)
    rng_file = folder / f"rng_{accelerator.process_index}.pt"
    if not ((folder / "progress.json").exists() and (folder / TRAIN_STATE_FILE).exists() and rng_file.exists()):
        return None
    state = torch.load(folder / TRAIN_STATE_FILE, map_location="cpu", weights_only=False)
    accelerator.unwrap_model(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((folder / "progress.json").read_text())
