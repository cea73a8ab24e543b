"""The ``hf`` engine's buffered dynamic KV cache against plain ``generate`` (the cache concatenated at every step):
same checkpoint, same prompts, same seed, same run, alternated.

Transformers' dynamic cache grows by ``torch.cat`` of the whole cache at every decoding step, a copy whose cost
grows with the sequence; ``rollout.preallocate_cache`` (reft_exp.engines.BufferedCache) writes each step's keys and
values into a buffer sized prompt + max new tokens and hands attention views of its first positions. Attention
sees the same values in the same shapes, so the outputs must be identical, sampled ones included (the script
checks token for token). The checkpoint is the learning tests' SFT run (benchmarks/generation_batch.py trains it
into ``--results-dir`` on first use, a cached stage). Cases: the tiny greedy SFT evaluation (48 prompts a call)
and the demo's vote sampling (32 samples a question, 2 questions a call, 128 new tokens).

    python benchmarks/kv_cache.py                      # ~2 minutes once for the checkpoint, then ~2-3
    python benchmarks/kv_cache.py --train-size 64 --test-size 8 --sft-epochs 1 --questions 4 --samples 4 \
        --max-new-tokens 12 --sample-max-new-tokens 12 --repeats 1 --results-dir /tmp/kv   # smoke
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from _common import write_json
from generation_batch import add_checkpoint_args, timed_generate, train_sft

from reft_exp.config import RolloutConfig
from reft_exp.engines import HFEngine
from reft_exp.evaluate import greedy_prompts
from reft_exp.generation import DecodingConfig, generate_texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_args(ap)
    ap.add_argument("--questions", type=int, default=60, help="test questions generated for")
    ap.add_argument("--samples", type=int, default=32, help="samples per question (the tiny vote's K)")
    ap.add_argument("--greedy-batch", type=int, default=48)
    ap.add_argument("--sample-batch", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=None, help="greedy budget (default: the tiny config's 224)")
    ap.add_argument("--sample-max-new-tokens", type=int, default=128, help="the tiny vote's sampling budget")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each engine per case (alternated)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))))

    from reft_exp.data import load_splits
    from reft_exp.models import load_causal_lm, load_tokenizer

    checkpoint, cfg = train_sft(args)
    model, tok = load_causal_lm(str(checkpoint), cfg.model), load_tokenizer(str(checkpoint), cfg.model)
    records = load_splits(cfg.dataset, "p")["test"][: args.questions]
    short = args.max_new_tokens is not None
    greedy = DecodingConfig(max_new_tokens=cfg.inference.max_new_tokens,
                            max_length=None if short else cfg.sft.eval_max_length)
    sample = DecodingConfig(do_sample=True, temperature=1.0, top_k=50, top_p=1.0,
                            max_new_tokens=args.sample_max_new_tokens, num_return_sequences=args.samples)
    cases = [("greedy, no header (SFT evaluation)", greedy_prompts(records, "p"), greedy, args.greedy_batch),
             (f"{args.samples} samples, header (vote)", greedy_prompts(records, "p", with_header=True), sample,
              args.sample_batch)]
    engines = {"plain": HFEngine(RolloutConfig(preallocate_cache=False)),
               "buffered": HFEngine(RolloutConfig(preallocate_cache=True))}
    print(f"checkpoint {checkpoint}; {len(records)} test questions; {torch.get_num_threads()} thread(s)")
    generate_texts(model, tok, cases[0][1][:8], cases[0][2], 8)  # warm-up, untimed: first-call allocations
    rows = []
    for name, prompts, decoding, bs in cases:
        times: dict[str, list[float]] = {k: [] for k in engines}
        outs: dict[str, list] = {}
        for _ in range(args.repeats):
            for key, engine in engines.items():
                seconds, out = timed_generate(model, tok, prompts, decoding, bs, engine)
                times[key].append(seconds)
                assert outs.setdefault(key, out) == out, f"{key}: the same seed gave other outputs"
        identical = outs["plain"] == outs["buffered"]
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["plain"] / med["buffered"]
        rows.append({"case": name, "batch": bs, "plain_s": [round(t, 2) for t in times["plain"]],
                     "buffered_s": [round(t, 2) for t in times["buffered"]], "ratio_plain_over_buffered":
                     round(ratio, 3), "identical": identical})
        print(f"{name}: plain {med['plain']:.2f} s, buffered {med['buffered']:.2f} s (medians of {args.repeats}), "
              f"ratio {ratio:.2f}x; outputs {'identical' if identical else 'DIFFER'}", flush=True)
    if args.json:
        write_json(args.json, {"checkpoint": str(checkpoint), "rows": rows})
    if not all(r["identical"] for r in rows):
        raise SystemExit("the buffered cache changed the outputs")


if __name__ == "__main__":
    main()
