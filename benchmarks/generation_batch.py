"""Generation batch size at the tiny scale: the old tiny defaults (150 prompts a greedy call, 32 x K samples a
sampling call) against the new ones (48 prompts; 4 x K samples), same checkpoint, same prompts, same run.

``generate`` keeps every row of a batch running until the longest one stops (or hits its budget), and the
dynamic KV cache is copied at every step, so one runaway answer costs the whole batch its full length: on a
trained tiny model smaller batches are faster although each step does less work. The checkpoint is the
learning tests' SFT run (tests/test_learning.py: P-CoT, 2,000 training questions, SFT epoch 2 of 4), trained
by the app's `run_cell` into ``--results-dir`` on first use (a cached stage: ~2 CPU minutes once, then reused). Greedy
outputs must be identical at both batch sizes (the script says so); sampled ones are draws of the same
distribution, so only their accuracy is printed.

    python benchmarks/generation_batch.py                           # ~3 minutes on one core, then ~1
    python benchmarks/generation_batch.py --train-size 64 --test-size 8 --sft-epochs 1 --max-new-tokens 12 \
        --sample-max-new-tokens 12 --results-dir /tmp/gb   # smoke
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from _common import REPO_ROOT, write_json

from reft_exp.answers import AnswerSpec
from reft_exp.evaluate import greedy_prompts, score_completions
from reft_exp.execute import ProgramExecutor
from reft_exp.generation import DecodingConfig, generate_texts

SMOKE_PROMPT = 100  # tokens: longer than any tiny SFT prompt (88), for the smoke's short evaluation budget


def train_sft(args):
    """The SFT run's epoch checkpoint (the app's cached stage, trained in this process) and its config."""
    from reft_exp.config import load_run_config
    from reft_exp.run import run_cell

    cfg = load_run_config(["cot=p", f"dataset.train_size={args.train_size}", f"dataset.test_size={args.test_size}",
                           "sft.epochs=4", f"sft.train_epochs={args.sft_epochs}", "sft.batch_size=8",
                           "progress=false", f"paths.results_dir={args.results_dir}",
                           *([f"inference.max_new_tokens={args.max_new_tokens}",  # smoke: a short evaluation
                              f"sft.eval_max_length={SMOKE_PROMPT + args.max_new_tokens}"] if args.max_new_tokens else [])])
    record = run_cell(cfg)
    return Path(record["stages"]["sft"]["dir"]) / f"epoch_{args.sft_epochs}", cfg


def add_checkpoint_args(ap: argparse.ArgumentParser) -> None:
    """The options of :func:`train_sft` (the benchmarked checkpoint), shared with benchmarks/kv_cache.py."""
    ap.add_argument("--results-dir", default=str(REPO_ROOT / "results" / "bench_generation"))
    ap.add_argument("--train-size", type=int, default=2000)
    ap.add_argument("--test-size", type=int, default=200)
    ap.add_argument("--sft-epochs", type=int, default=2, help="epochs trained of the 4-epoch schedule")


def timed_generate(model, tok, prompts, decoding, batch_size, engine=None) -> tuple[float, list[list[str]]]:
    """Seconds and outputs of one seeded ``generate_texts`` call."""
    torch.manual_seed(0)
    start = time.perf_counter()
    out = generate_texts(model, tok, prompts, decoding, batch_size, engine=engine)
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_args(ap)
    ap.add_argument("--questions", type=int, default=200, help="test questions generated for")
    ap.add_argument("--samples", type=int, default=10, help="samples per question (the tiny vote's K)")
    ap.add_argument("--greedy-batch", type=int, nargs=2, default=[150, 48], metavar=("OLD", "NEW"))
    ap.add_argument("--sample-batch", type=int, nargs=2, default=[32, 4], metavar=("OLD", "NEW"))
    ap.add_argument("--max-new-tokens", type=int, default=None, help="greedy budget (default: the tiny config's 224)")
    ap.add_argument("--sample-max-new-tokens", type=int, default=128, help="the tiny vote's sampling budget")
    ap.add_argument("--rl-eval-max-length", type=int, default=300, help="tiny ReFT's method.eval_max_length")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from reft_exp.data import load_splits
    from reft_exp.models import load_causal_lm, load_tokenizer

    checkpoint, cfg = train_sft(args)
    model, tok = load_causal_lm(str(checkpoint), cfg.model), load_tokenizer(str(checkpoint), cfg.model)
    records = load_splits(cfg.dataset, "p")["test"][: args.questions]
    spec = AnswerSpec(cot="p")
    # prompt + response budgets as the SFT / RL evaluations; --max-new-tokens: that many new tokens instead
    short = args.max_new_tokens is not None
    greedy_sft = DecodingConfig(max_new_tokens=cfg.inference.max_new_tokens,
                                max_length=None if short else cfg.sft.eval_max_length)
    greedy_rl = DecodingConfig(max_new_tokens=cfg.inference.max_new_tokens,
                               max_length=None if short else args.rl_eval_max_length)
    sample = DecodingConfig(do_sample=True, temperature=1.0, top_k=50, top_p=1.0, max_new_tokens=args.sample_max_new_tokens,
                            num_return_sequences=args.samples)
    cases = [("greedy, no header (SFT evaluation)", greedy_prompts(records, "p"), greedy_sft, args.greedy_batch),
             ("greedy, header (RL evaluation)", greedy_prompts(records, "p", with_header=True), greedy_rl,
              args.greedy_batch),
             (f"{args.samples} samples, header (vote)", greedy_prompts(records, "p", with_header=True), sample,
              args.sample_batch)]
    rows = []
    print(f"checkpoint {checkpoint}; {len(records)} test questions; {torch.get_num_threads()} thread(s)")
    generate_texts(model, tok, cases[0][1][:8], cases[0][2], 8)  # warm-up, untimed: first-call allocations
    with ProgramExecutor(timeout_s=5) as executor:  # one sandbox scores every case (outside the timed calls)
        for name, prompts, decoding, (old_bs, new_bs) in cases:
            t_old, out_old = timed_generate(model, tok, prompts, decoding, old_bs)
            t_new, out_new = timed_generate(model, tok, prompts, decoding, new_bs)
            acc = [sum(r["correct"] for r in score_completions(records, [o[0] for o in out], spec, executor))
                   / len(records) for out in (out_old, out_new)]
            same = "identical outputs" if out_old == out_new else "outputs differ (sampled)"
            rows.append({"case": name, "old_batch": old_bs, "new_batch": new_bs, "old_s": round(t_old, 2),
                         "new_s": round(t_new, 2), "ratio_old_over_new": round(t_old / t_new, 2),
                         "first_answer_accuracy": [round(a, 3) for a in acc], "identical": out_old == out_new})
            print(f"{name}: batch {old_bs} {t_old:.1f} s, batch {new_bs} {t_new:.1f} s, ratio old/new "
                  f"{t_old / t_new:.2f}x; {same}; accuracy of the first answer {acc[0]:.3f} / {acc[1]:.3f}", flush=True)
    if args.json:
        write_json(args.json, {"checkpoint": str(checkpoint), "rows": rows})


if __name__ == "__main__":
    main()
