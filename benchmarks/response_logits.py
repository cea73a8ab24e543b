"""The PPO update's forward + backward with the LM head on the response positions only, versus on every position.

The RL updates need the log-probs of the response tokens only, but a causal LM's forward computes logits for
every position of prompt + response: ``[B, L, V]``, of which the prompt's part is thrown away, and a separate
value model's logits are never used at all. Ours (``reft_exp.rl.policy.response_logprobs_values``) passes
``logits_to_keep``: the policy's LM head runs on the last ``L - P + 1`` positions, the value model's on one.
Both variants run on the same batch (GSM8K training questions as prompts, their gold N-CoT as responses, so
the lengths are real) and give identical log-probs and values (checked here); the table gives the time of one
PPO epoch (policy + separate critic forward, backward) and one reference forward, and the logits' size.

    python benchmarks/response_logits.py --size cpu --questions 32
    python benchmarks/response_logits.py --size 1b --questions 8       # GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import (
    build_model,
    build_tokenizer,
    device_and_dtype,
    device_name,
    gsm8k_records,
    n_params,
    sync,
    write_json,
)


def teacher_forced_rollout(tokenizer, records, device):
    """A rollout whose responses are the gold CoTs (+ EOS): prompts left-padded, responses right-padded."""
    from reft_exp.generation import encode_prompts, left_pad
    from reft_exp.rl.rollout import rl_prompts, rollout_from_ids

    enc = encode_prompts(tokenizer, rl_prompts(records, "n"), True, None)
    ids, attn = left_pad(tokenizer, enc)
    resp = [tokenizer(" " + r["answer_cot"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for r in records]
    width = max(map(len, resp))
    resp = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in resp])
    ro = rollout_from_ids(tokenizer, records, enc, torch.cat([ids, resp], 1), attn)
    for name in ("input_ids", "attention_mask", "response_mask"):
        setattr(ro, name, getattr(ro, name).to(device))
    return ro


def all_positions(policy, ref, ro):
    """The update before: logits of every position from the policy and the value model, sliced afterwards."""
    from reft_exp.rl.ppo_core import logprobs_from_logits

    p = ro.prompt_width
    out = policy.lm(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=ro.position_ids)
    hidden = policy.value_lm(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=ro.position_ids,
                             output_hidden_states=True).hidden_states[-1]
    values = policy.v_head(hidden.float()).squeeze(-1)[:, p - 1 : -1]
    logp = logprobs_from_logits(out.logits[:, p - 1 : -1].float(), ro.input_ids[:, p:])
    with torch.no_grad():
        ref_logits = ref(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=ro.position_ids).logits
        logprobs_from_logits(ref_logits[:, p - 1 : -1].float(), ro.input_ids[:, p:])
    return logp, values, out.logits.numel()  # the policy's (the value model's and the reference's alike)


def response_only(policy, ref, ro):
    from reft_exp.rl.policy import response_logprobs_values

    logp, values, logits = response_logprobs_values(policy, ro)
    with torch.no_grad():
        response_logprobs_values(ref, ro, with_values=False)
    return logp, values, logits.numel() + logits.shape[0] * logits.shape[-1]  # kept: R + 1 positions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="cpu", choices=["cpu", "100m", "1b", "7b"])
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--records", type=int, default=2000, help="GSM8K training records (tokenizer, questions)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from reft_exp.rl.policy import PolicyWithValue

    device, dtype = device_and_dtype()
    records = gsm8k_records("train", args.records)
    tok = build_tokenizer(args.size, records)
    policy = PolicyWithValue(build_model(args.size, tok, device, dtype),
                             build_model(args.size, tok, device, dtype, seed=1)).to(device)
    ref = build_model(args.size, tok, device, dtype).eval().requires_grad_(False)
    ro = teacher_forced_rollout(tok, records[: args.questions], device)

    a, b = all_positions(policy, ref, ro), response_only(policy, ref, ro)
    same = torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    close = torch.allclose(a[0], b[0], atol=1e-4) and torch.allclose(a[1], b[1], atol=1e-4)
    variants = {"baseline (all positions)": all_positions, "ours (response positions)": response_only}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):  # alternated, so that a slower phase of the machine hits both
        for name, fn in variants.items():
            policy.zero_grad(set_to_none=True)
            sync()
            t = time.perf_counter()
            logp, values, _ = fn(policy, ref, ro)
            (-(logp * ro.response_mask).sum() + values.square().mean()).backward()
            sync()
            times[name].append(time.perf_counter() - t)
    rows = {name: {"median_s": statistics.median(ts), "logits_elements": fn(policy, ref, ro)[2]}
            for (name, ts), fn in zip(times.items(), variants.values())}
    base, ours = rows.values()
    L, P = ro.input_ids.shape[1], ro.prompt_width
    print(f"response_logits benchmark on {device_name()}: size {args.size} ({n_params(ref) / 1e6:.1f}M params, "
          f"{dtype}, vocab {len(tok)}), {args.questions} questions, width {L} = prompt {P} + response {L - P}; "
          f"log-probs and values identical: {same} (within 1e-4: {close})")
    print(f"  {'variant':<27} {'median s':>9} {'logits (M elements)':>20}")
    for name, r in rows.items():
        print(f"  {name:<27} {r['median_s']:9.3f} {r['logits_elements'] / 1e6:20.2f}")
    ratio = base["median_s"] / ours["median_s"]
    print(f"  ratio baseline/ours (time): {ratio:.2f}x; logits {base['logits_elements'] / ours['logits_elements']:.2f}x "
          f"smaller")
    write_json(args.json, {"benchmark": "response_logits", "device": device_name(), "size": args.size,
                           "identical": same, "results": rows, "speedup": ratio, "args": vars(args)})


if __name__ == "__main__":
    main()
