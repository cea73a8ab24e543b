"""Torch intra-op threads for the tiny model on CPU: training examples/s with 1 vs 2 threads, same run.

    python benchmarks/threads.py [--threads 1 2] [--batch-sizes 32 64 128] [--steps 5] [--seq-len 90]

Each thread count runs in its own subprocess (torch fixes its thread pool at first use). Prints one row per
(threads, batch size) and the ratio to the first thread count.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure(threads: int, batch_sizes: list[int], steps: int, seq_len: int) -> dict[int, float]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from reft_exp.config import TinyModelConfig

    torch.set_num_threads(threads)
    c = TinyModelConfig(name="tiny", kind="tiny")
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = {}
    for bs in batch_sizes:
        x = torch.randint(0, c.vocab_size, (bs, seq_len))

        def step(x: torch.Tensor = x) -> None:
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()

        step()  # warm-up
        t = time.perf_counter()
        for _ in range(steps):
            step()
        out[bs] = bs * steps / (time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seq-len", type=int, default=90)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.batch_sizes, args.steps, args.seq_len)))
        return
    results = {}
    for t in args.threads:
        cmd = [sys.executable, __file__, "--child", str(t), "--steps", str(args.steps), "--seq-len",
               str(args.seq_len), "--batch-sizes", *map(str, args.batch_sizes)]
        results[t] = {int(k): v for k, v in json.loads(subprocess.check_output(cmd, text=True)).items()}
    base = args.threads[0]
    print(f"{'threads':>7} {'batch':>5} {'examples/s':>11} {'vs ' + str(base) + ' thread(s)':>16}")
    for t in args.threads:
        for bs in args.batch_sizes:
            print(f"{t:>7} {bs:>5} {results[t][bs]:>11.1f} {results[t][bs] / results[base][bs]:>15.2f}x")


if __name__ == "__main__":
    main()
