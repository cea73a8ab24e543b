"""SFT training throughput on real GSM8K lengths: plain shuffled batches (upstream) vs length-bucketed ones.

GSM8K training questions + N-CoT solutions (``$REFT_SHARED_DIR/data/gsm8k/train.jsonl``) are encoded with the
project's SFT encoding (``reft_exp.batching.encode_records``) and fed by ``reft_exp.batching.sft_loader`` with
``length_bucketing`` off and on. Each variant times ``--steps`` training steps (forward, backward, grad clip,
AdamW) after ``--warmup`` untimed ones, and reports non-pad tokens/s (the useful work), the padding share and
MFU = 6 x params x non-pad tokens/s / peak (bf16 dense peak of the card; none on CPU).

    python benchmarks/sft.py --size cpu --batch-size 8 --steps 4
    python benchmarks/sft.py --size 1b --batch-size 8 --steps 20        # GPU
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
    peak_tflops,
    timed,
    write_json,
)

from reft_exp.batching import encode_records, padding_fraction, sft_loader


def run_variant(model, examples, pad_id, batch_size, bucketing, steps, warmup, device) -> dict:
    loader = sft_loader(examples, batch_size, torch.Generator().manual_seed(0), pad_id, bucketing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batches = iter(loader)
    model.train()

    def step(batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step(next(batches))
    timed_batches = [next(batches) for _ in range(steps)]
    _, seconds = timed(lambda: [step(b) for b in timed_batches])
    real = sum(int(b["attention_mask"].sum()) for b in timed_batches)
    cells = sum(b["attention_mask"].numel() for b in timed_batches)
    lengths = [len(e["input_ids"]) for e in examples]
    epoch_batches = list(loader.batch_sampler) if bucketing else None
    return {"length_bucketing": bucketing, "seconds": seconds, "tokens": real, "tokens_per_s": real / seconds,
            "padded_tokens_per_s": cells / seconds, "padding_share": 1 - real / cells,
            "epoch_padding_share": padding_fraction(epoch_batches, lengths) if epoch_batches else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="cpu", choices=["cpu", "100m", "1b", "7b"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--peak-tflops", type=float, default=None, help="for MFU (default: known GPUs)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    device, dtype = device_and_dtype()
    records = gsm8k_records("train", args.records)
    tok = build_tokenizer(args.size, records)
    examples = encode_records(tok, records, "n", args.max_length)
    model = build_model(args.size, tok, device, dtype)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    params, peak = n_params(model), peak_tflops(args.peak_tflops)
    rows = [run_variant(model, examples, tok.pad_token_id, args.batch_size, b, args.steps, args.warmup, device)
            for b in (False, True)]
    for r in rows:
        r["mfu"] = 6 * params * r["tokens_per_s"] / (peak * 1e12) if peak else None
    lengths = sorted(len(e["input_ids"]) for e in examples)
    print(f"sft benchmark on {device_name()}: size {args.size} ({params / 1e6:.1f}M params, {dtype}), batch "
          f"{args.batch_size}, {args.steps} timed steps; GSM8K lengths median {lengths[len(lengths) // 2]} "
          f"max {lengths[-1]} tokens")
    print(f"  {'batches':<16} {'tokens/s':>10} {'padded/s':>10} {'pad share':>9} {'epoch pad':>9} {'MFU':>7}")
    for r in rows:
        mfu = f"{100 * r['mfu']:6.1f}%" if r["mfu"] is not None else "     -"
        epoch_pad = f"{r['epoch_padding_share']:9.3f}" if r["epoch_padding_share"] is not None else "        -"
        print(f"  {'length-bucketed' if r['length_bucketing'] else 'shuffled':<16} {r['tokens_per_s']:10.1f} "
              f"{r['padded_tokens_per_s']:10.1f} {r['padding_share']:9.3f} {epoch_pad} {mfu}")
    ratio = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(f"  ratio bucketed/shuffled (non-pad tokens/s): {ratio:.2f}x")
    write_json(args.json, {"benchmark": "sft", "device": device_name(), "size": args.size, "params": params,
                           "rows": rows, "ratio": ratio, "args": vars(args)})


if __name__ == "__main__":
    main()
