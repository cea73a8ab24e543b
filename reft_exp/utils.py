"""Small shared helpers: atomic writes, seeding, stage timers, environment facts."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file in the same folder + fsync + rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block, then put every RNG back as it was (Python's, NumPy's, torch's on the CPU and on this
    process's GPU): a stage computed inside another one seeds and draws without changing what its caller draws
    next, so the caller's numbers are the same whether that stage was computed or read from the cache. Only the
    current GPU: reading another device's state would open a CUDA context there from every process of a
    multi-GPU run (each process draws on its own device)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = [torch.cuda.current_device()] if cuda else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class StageTimer:
    """Accumulates wall time per named stage: ``with timer("sft"): ...``; ``timer.seconds`` is a dict. A name
    cannot be entered again inside itself: the inner time would count twice."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._running: set[str] = set()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if name in self._running:
            raise RuntimeError(f"timer {name!r} entered inside itself: its time would count twice")
        self._running.add(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self._running.discard(name)


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    import accelerate
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "git_commit": git_commit(),
    }


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    if info["cuda_devices"]:
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Rows as a JSON-lines file, written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file (``steps.jsonl``, ``samples.jsonl``); blank lines are skipped."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
