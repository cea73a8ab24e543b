"""What every method needs for one grid cell: the typed config, the accelerator, the data, the base model
(built or resolved once through the stage cache), the answer spec, timers and the metrics tracker."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from reft_exp.answers import AnswerSpec
from reft_exp.config import GgufModelConfig, HubModelConfig, RunConfig, TinyModelConfig
from reft_exp.stages import Stage, run_stage, stage_key
from reft_exp.tracking import Tracker
from reft_exp.utils import StageTimer

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    cfg: RunConfig
    accelerator: Any
    splits: dict[str, list[dict]]
    tracker: Tracker
    timer: StageTimer = field(default_factory=StageTimer)
    stages_used: dict[str, dict] = field(default_factory=dict)  # kind -> {dir, reused}
    executor_layers: dict[str, str] | None = None  # the P-CoT sandbox's active layers, once started
    warmup: dict | None = None  # the SFT warm-up checkpoint this cell used: epoch, rule (methods/sft.py:sft_checkpoint)

    @property
    def cot(self) -> str:
        return self.cfg.cot.name

    @cached_property
    def spec(self) -> AnswerSpec:
        return AnswerSpec.from_config(self.cfg.reward, self.cfg.dataset.answer_type, self.cot)

    @cached_property
    def executor(self):
        """The sandboxed program executor (P-CoT only), started on first use; its layers go into the record."""
        from reft_exp.execute import ProgramExecutor

        e = self.cfg.executor
        executor = ProgramExecutor(timeout_s=e.timeout_s, memory_mb=e.memory_mb, workers=e.workers,
                                   max_output_bytes=e.max_output_bytes, isolation=e.isolation, bwrap=e.bwrap)
        self.executor_layers = executor.layers
        log.log(logging.INFO if e.isolation == "strict" else logging.WARNING, "P-CoT sandbox: %s", executor.layers)
        return executor

    @property
    def executor_if_needed(self):
        """The executor for P-CoT answers, None for N-CoT (no worker processes started)."""
        return self.executor if self.cot == "p" else None

    def close(self) -> None:
        if "executor" in self.__dict__:
            self.executor.close()

    @property
    def cache_dir(self) -> Path:
        return Path(self.cfg.paths.cache_dir)

    def note_stage(self, stage: Stage, reused: bool, name: str | None = None) -> None:
        """Record a stage this cell used (``name`` defaults to the stage kind; several samples stages)."""
        name = name or stage.kind
        self.stages_used[name] = {"dir": str(stage.dir), "hash": stage.hash, "reused": reused}
        log.info("stage %s %s: %s", name, "reused" if reused else "computed", stage.dir)

    @cached_property
    def base_model_path(self) -> str:
        """A folder or hub id that ``from_pretrained`` loads; the tiny model is built into the cache once."""
        model_cfg = self.cfg.model
        if isinstance(model_cfg, HubModelConfig):
            return model_cfg.path
        if isinstance(model_cfg, GgufModelConfig):  # a model shipped in a pip package, converted once
            from reft_exp.models import prepare_gguf_model

            with self.timer("convert_gguf_model"):
                stage, reused = prepare_gguf_model(model_cfg, self.cache_dir, self.accelerator)
            self.note_stage(stage, reused)
            return str(stage.dir)
        assert isinstance(model_cfg, TinyModelConfig)
        from reft_exp.data import load_splits
        from reft_exp.models import build_tiny_model

        # The tokenizer sees both CoT styles of the training split, so one tiny model serves cot=n and p.
        stage = Stage(self.cache_dir, "tiny_model", f"{model_cfg.name}_{self.cfg.dataset.name}",
                      stage_key(self.cfg, ("model", "dataset")))

        def build(folder: Path) -> dict:
            if self.accelerator.is_main_process:
                texts = ["Question:\nAnswer reasoning:\nTherefore, the answer is: 0123456789"]
                for cot in ("n", "p"):
                    for r in load_splits(self.cfg.dataset, cot)["train"]:
                        texts += [r["question"], r["answer_cot"]]
                build_tiny_model(folder, texts, model_cfg)
            return {"model": model_cfg.name}

        with self.timer("build_tiny_model"):
            reused = run_stage(stage, self.accelerator, build)
        self.note_stage(stage, reused)
        return str(stage.dir)

    @cached_property
    def base_model_key(self) -> str:
        """What stands for the base model in the keys of the stages trained from it: the hub id or folder the
        config names, or, for a model built or converted into the cache, its stage folder's name (label-hash),
        not its path, so that a results folder keeps its cache when it moves or is named another way
        (``REFT_RESULTS_DIR`` relative or absolute, copied to a shared filesystem)."""
        path = self.base_model_path
        return path if isinstance(self.cfg.model, HubModelConfig) else Path(path).name
