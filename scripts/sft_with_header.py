"""Greedy test accuracy of a sweep's SFT best checkpoints with the RL evaluations' prompt (P-CoT header in the
prompt), beside SFT's own number (question only) and ReFT's: the same-prompt check of claim (1).

The official protocol evaluates SFT from the question alone (train_sft_model.py) and the RL methods with the
program header in the prompt (train_rl_reft.py:152-153), so "ReFT best vs SFT best" compares two prompts. This
re-evaluates each seed's SFT ``best/`` checkpoint both ways with the lengths of the sweep's config.

    python scripts/sft_with_header.py --runs results/claims_runs experiment=claims
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from accelerate import Accelerator

from reft_exp.answers import AnswerSpec
from reft_exp.config import load_run_config
from reft_exp.data import load_splits
from reft_exp.evaluate import greedy_eval
from reft_exp.execute import ProgramExecutor
from reft_exp.models import load_causal_lm, load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="results/claims_runs", help="the sweep's records")
    ap.add_argument("overrides", nargs="*", help="the sweep's config overrides (e.g. experiment=claims)")
    args = ap.parse_args()
    rows = {}
    for path in sorted(Path(args.runs).glob("*__p__sft__greedy__seed*.json")):
        sft = json.loads(path.read_text())
        seed = sft["coordinates"]["seed"]
        reft_path = Path(str(path).replace("__sft__greedy__", "__reft__greedy__"))
        reft = json.loads(reft_path.read_text()) if reft_path.exists() else None
        cfg = load_run_config([*args.overrides, f"seed={seed}", "method=reft"])  # the RL evaluation's lengths
        best = Path(sft["stages"]["sft"]["dir"]) / "best"
        model, tok = load_causal_lm(str(best), cfg.model), load_tokenizer(str(best), cfg.model)
        test = load_splits(cfg.dataset, "p")["test"]
        spec = AnswerSpec.from_config(cfg.reward, cfg.dataset.answer_type, "p")
        row = {"sft_record": sft["accuracy"]}
        with ProgramExecutor(timeout_s=cfg.executor.timeout_s) as executor:
            for with_header in (False, True):
                res = greedy_eval(Accelerator(cpu=True), model, tok, test, spec, max_new_tokens=0,
                                  batch_size=cfg.method.eval_batch_size, executor=executor, with_header=with_header,
                                  max_length=cfg.method.eval_max_length if with_header else cfg.sft.eval_max_length)
                row["sft_with_header" if with_header else "sft_question_only"] = res.accuracy
        if reft:
            row |= {"reft": reft["accuracy"], "reft_warmup_with_header": reft["epochs"][0]["test_accuracy"]}
        rows[seed] = row
        print(seed, {k: round(v, 4) for k, v in row.items()}, flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
