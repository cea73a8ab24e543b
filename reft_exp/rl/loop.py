"""What the RL methods (ReFT, online self-training) share on top of the runner: the training questions, the
order of an epoch, each process's slice of a step, the greedy evaluation of the policy (P-CoT header in the
prompt, prompt + response <= ``eval_max_length``, train_rl_reft.py:152-153, 683-686) and its schedule (the
warm-up evaluated as epoch 0 but never the best, train_rl_reft.py:854, train_rl_sl.py:433)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from reft_exp.checkpoint import save_model
from reft_exp.config import ConfigError, RLLoopConfig
from reft_exp.evaluate import cached_greedy_eval, eval_outputs, greedy_eval
from reft_exp.rl.rollout import rollout_rows
from reft_exp.runner import Schedule, Task


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The question order of an epoch: a function of (seed, epoch) only, so a resumed run sees the same."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def rl_questions(train: list[dict], max_questions: int | None) -> list[dict]:
    """The RL training questions: the first ``max_questions`` (None = all). None is dropped for its length: a
    prompt over ``max_prompt_length`` tokens is truncated at rollout time (train_rl_reft.py:169)."""
    return list(train[:max_questions])


def rl_schedule(desc: str, rc: RLLoopConfig) -> Schedule:
    return Schedule(desc=desc, epochs=rc.epochs, eval_every_epochs=rc.eval_every_epochs, eval_init=True,
                    best_counts_init=False, save_best=rc.save_best, log_every_steps=rc.log_every_steps,
                    steps_file=True)


class RLTask(Task):
    """An RL method's task: subclasses build ``self.tokenizer`` and the prepared models, define ``lm()`` (the
    unwrapped policy LM) and ``step(records)``."""

    def __init__(self, ctx, rc: RLLoopConfig, desc: str, init_path: str | None = None):
        self.ctx, self.rc, self.desc, self.init_path = ctx, rc, desc, init_path
        acc = ctx.accelerator
        self.questions = rl_questions(ctx.splits["train"], rc.max_questions)
        self.per_step = rc.batch_size * acc.num_processes
        self.steps_per_epoch = len(self.questions) // self.per_step
        if self.steps_per_epoch == 0:
            raise ConfigError(f"method.batch_size: {len(self.questions)} training questions, fewer than one "
                              f"global batch ({rc.batch_size} x {acc.num_processes} processes); lower it")

    def lm(self):
        raise NotImplementedError

    def keep_rollouts(self, ro) -> None:
        """Append up to ``save_rollouts`` scored rollouts of this epoch to ``outputs/rollouts_epoch<n>.jsonl``."""
        room = self.rc.save_rollouts - self.saved
        if room <= 0 or self.outputs_dir is None or not self.ctx.accelerator.is_main_process:
            return
        rows = rollout_rows(ro)[:room]
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.outputs_dir / f"rollouts_epoch{self.epoch}.jsonl", "a") as f:
            f.writelines(json.dumps(r, default=str) + "\n" for r in rows)
        self.saved += len(rows)

    def batches(self, epoch: int):
        """This process's records of each step of ``epoch``."""
        self.epoch, self.saved = epoch, 0
        if self.outputs_dir is not None and self.ctx.accelerator.is_main_process:  # a resumed epoch is redone
            (self.outputs_dir / f"rollouts_epoch{epoch}.jsonl").unlink(missing_ok=True)
        acc, b = self.ctx.accelerator, self.rc.batch_size
        order = epoch_order(len(self.questions), self.ctx.cfg.root.seed, epoch)
        for i in range(self.steps_per_epoch):
            step_ids = order[i * self.per_step : (i + 1) * self.per_step]
            yield [self.questions[j] for j in step_ids[acc.process_index * b : (acc.process_index + 1) * b]]

    def evaluate(self) -> dict:
        ctx, cfg, rc = self.ctx, self.ctx.cfg, self.rc
        res = greedy_eval(ctx.accelerator, self.lm(), self.tokenizer, ctx.splits["test"], ctx.spec,
                          cfg.inference.max_new_tokens, rc.eval_batch_size, cfg.model.add_special_tokens,
                          cfg.root.progress, ctx.executor_if_needed, with_header=rc.eval_with_header,
                          max_length=rc.eval_max_length, length_key="method.eval_max_length",
                          max_prompt_length=rc.max_prompt_length)  # test prompts cut as the rollouts' (:169)
        return {"test_accuracy": res.accuracy, "outputs": eval_outputs(ctx.splits["test"], res)}

    def evaluate_initial(self) -> dict:
        """Epoch 0: the evaluation of the checkpoint the run starts from, a cached ``greedy_eval`` stage
        (:func:`reft_exp.evaluate.cached_greedy_eval`: keyed by the checkpoint and this method's evaluation
        settings), so the warm-up is evaluated once for every RL method and cell that starts from it."""
        if self.init_path is None:
            return self.evaluate()
        rc = self.rc
        settings = {"with_header": rc.eval_with_header, "max_length": rc.eval_max_length,
                    "max_prompt_length": rc.max_prompt_length, "batch_size": rc.eval_batch_size}
        return cached_greedy_eval(self.ctx, self.init_path, settings, self.evaluate, name="warmup_eval")

    def save_model(self, folder: Path) -> None:
        save_model(self.ctx.accelerator, self.lm(), self.tokenizer, folder, self.ctx.cfg.model.dtype)
