"""The per-step stats file of the RL methods (ReFT, online self-training): one JSON line per step."""

from __future__ import annotations

import json
from pathlib import Path

from reft_exp.utils import atomic_write_text


class StepsLog:
    """``steps.jsonl`` in a stage folder. On (re)start it drops the steps logged after ``resume_step`` (the
    checkpoint the run resumes from: those steps are redone); only the main process writes."""

    def __init__(self, path: Path, resume_step: int, is_main: bool):
        self.path, self.is_main = path, is_main
        if is_main:
            old = path.read_text().splitlines() if path.exists() else []
            kept = [ln for ln in old if json.loads(ln)["step"] <= resume_step]
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))

    def append(self, epoch: int, step: int, stats: dict) -> None:
        if self.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps({"epoch": epoch, "step": step} | stats) + "\n")
