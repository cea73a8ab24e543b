"""Rollout engine throughput: an engine (default ``hf_static``; ``hf``: its buffered KV cache) versus plain generate.

Same random-init model, same GSM8K test prompts, same run. Each engine first runs one warm-up batch (its
compile / cache allocation), then every batch is timed; the output is generated tokens/s (non-pad response
tokens) for both and the ratio. The baseline is ``generate`` as transformers ships it (``rollout.engine=hf`` with
``preallocate_cache: false``: the dynamic cache concatenated at every step). Greedy by default (``--sample`` samples as ReFT rollouts do: temperature 1,
top_k 0, top_p 1). A random model rarely emits EOS, so nearly every row runs to ``--max-new-tokens``.

    python benchmarks/rollout.py --size cpu --prompts 16 --batch-size 8 --max-new-tokens 32
    python benchmarks/rollout.py --size 1b --prompts 256 --batch-size 64 --max-new-tokens 300   # GPU
"""

from __future__ import annotations

import argparse

import torch
from _common import (
    build_model,
    build_tokenizer,
    device_and_dtype,
    device_name,
    gsm8k_records,
    n_params,
    timed,
    write_json,
)

from reft_exp.config import RolloutConfig
from reft_exp.engines import make_engine
from reft_exp.generation import DecodingConfig, encode_prompts, left_pad
from reft_exp.prompts import build_prompt


def _generate(engine, model, tok, prompts, decoding, batch_size) -> tuple[list[list[int]], int]:
    """The generated ids of each prompt (the project's prompt encoding and left padding) and how many tokens
    were generated (up to each row's EOS): decode throughput, whatever the (random) model writes."""
    enc = encode_prompts(tok, prompts)
    rows, tokens = [], 0
    for i in range(0, len(enc), batch_size):
        ids, attn = left_pad(tok, enc[i : i + batch_size])
        seqs = engine.generate(model, ids.to(model.device), attn.to(model.device), do_sample=decoding.do_sample,
                               max_new_tokens=decoding.max_new_tokens, pad_token_id=tok.pad_token_id,
                               eos_token_id=tok.eos_token_id)
        for row in seqs[:, ids.shape[1]:].tolist():
            row = row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row
            rows.append(row)
            tokens += len(row)
    return rows, tokens


def run_engine(engine, model, tok, prompts, decoding, batch_size) -> dict:
    _generate(engine, model, tok, prompts[:batch_size], decoding, batch_size)  # warm-up
    torch.manual_seed(0)
    (outs, tokens), seconds = timed(lambda: _generate(engine, model, tok, prompts, decoding, batch_size))
    return {"engine": engine.name, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "outputs": outs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="cpu", choices=["cpu", "100m", "1b", "7b"])
    ap.add_argument("--engine", default="hf_static", choices=["hf", "hf_static", "vllm"],
                    help="hf: the default engine, its KV cache written in place (rollout.preallocate_cache)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--sample", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="hf_static without torch.compile")
    ap.add_argument("--records", type=int, default=2000, help="GSM8K training records (tokenizer, questions)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    device, dtype = device_and_dtype()
    tok = build_tokenizer(args.size, gsm8k_records("train", args.records))
    model = build_model(args.size, tok, device, dtype).eval()
    prompts = [build_prompt(r["question"], "n") for r in gsm8k_records("test", args.prompts)]
    decoding = DecodingConfig(do_sample=args.sample, max_new_tokens=args.max_new_tokens)
    engine = make_engine(RolloutConfig(engine=args.engine, compile=not args.no_compile))
    plain = make_engine(RolloutConfig(engine="hf", preallocate_cache=False))
    base = run_engine(plain, model, tok, prompts, decoding, args.batch_size) | {"engine": "hf_plain"}
    ours = run_engine(engine, model, tok, prompts, decoding, args.batch_size)
    same = sum(a == b for a, b in zip(base.pop("outputs"), ours.pop("outputs")))
    ratio = ours["tokens_per_s"] / base["tokens_per_s"]
    print(f"rollout benchmark on {device_name()}: size {args.size} ({n_params(model) / 1e6:.1f}M params, {dtype}), "
          f"{len(prompts)} prompts, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, "
          f"{'sampled' if args.sample else 'greedy'}")
    for r in (base, ours):
        print(f"  {r['engine']:<10} {r['tokens_per_s']:10.1f} tokens/s  ({r['tokens']} tokens, {r['seconds']:.2f} s)")
    print(f"  ratio {engine.name}/hf_plain: {ratio:.2f}x; identical outputs {same}/{len(prompts)}")
    write_json(args.json, {"benchmark": "rollout", "device": device_name(), "size": args.size,
                           "params": n_params(model), "baseline": base, "ours": ours, "ratio": ratio,
                           "identical_outputs": same, "prompts": len(prompts), "args": vars(args)})


if __name__ == "__main__":
    main()
