"""One ReFT PPO step (``reft_exp.methods.reft.ppo_step``) of 32 questions: ours versus an upstream-style loop.

Both run the project's real ``ppo_step`` (sample, score, policy / reference / critic forward passes, GAE,
whitening, ``ppo_epochs`` clipped updates) on the same random-init model and GSM8K training questions:

* baseline (upstream style): rollouts from plain ``model.generate`` (``rollout.engine=hf``);
* ours: rollouts from the configured engine (default ``hf_static``: static KV cache + compiled decode step,
  valid across the in-place weight updates).

Each variant runs one warm-up step (compilation, allocator), then ``--steps`` timed steps; the table splits the
step time into generate / score / update as ``ppo_step`` reports it.

    python benchmarks/ppo_step.py --size cpu --questions 8 --max-length 160
    python benchmarks/ppo_step.py --size 1b --questions 32 --max-length 700       # GPU
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import (
    REPO_ROOT,
    build_model,
    build_tokenizer,
    device_and_dtype,
    device_name,
    gsm8k_records,
    n_params,
    write_json,
)

from reft_exp.config import RolloutConfig
from reft_exp.engines import make_engine, using_engine


def run_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from reft_exp.config import validate

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return validate(cfg, choices)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="cpu", choices=["cpu", "100m", "1b", "7b"])
    ap.add_argument("--engine", default="hf_static", choices=["hf_static", "vllm"])
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=700, help="prompt + response (upstream 700)")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--critic-shared", action="store_true", help="value head on the policy (paper default)")
    ap.add_argument("--records", type=int, default=2000, help="GSM8K training records (tokenizer, questions)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from accelerate import Accelerator

    from reft_exp.context import RunContext
    from reft_exp.distributed import prepare_frozen
    from reft_exp.methods.reft import ppo_step
    from reft_exp.rl.policy import PolicyWithValue
    from reft_exp.tracking import Tracker

    cfg = run_config(["method=reft", f"method.batch_size={args.questions}", f"method.max_length={args.max_length}",
                      f"method.max_prompt_length={min(300, args.max_length // 2)}",
                      f"method.critic_shared={str(args.critic_shared).lower()}", "logger=none",
                      f"paths.results_dir={REPO_ROOT / 'results'}"])
    rc = cfg.method
    device, dtype = device_and_dtype()
    records = gsm8k_records("train", args.records)
    tok = build_tokenizer(args.size, records)
    acc = Accelerator(cpu=device.type == "cpu")
    ctx = RunContext(cfg=cfg, accelerator=acc, splits={}, tracker=Tracker())
    lm = build_model(args.size, tok, device, dtype)
    value_lm = None if rc.critic_shared else build_model(args.size, tok, device, dtype)
    policy = PolicyWithValue(lm, value_lm).to(device)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=rc.lr)
    policy, optimizer = acc.prepare(policy, optimizer)
    ref = prepare_frozen(acc, build_model(args.size, tok, device, dtype))
    from reft_exp.rl.loop import rl_questions

    questions = rl_questions(records, args.questions * (args.steps + 1) * 2)

    results = {}
    batches = iter([questions[i : i + args.questions] for i in range(0, len(questions), args.questions)])
    for name, engine_name in (("baseline (hf generate)", "hf"), (f"ours ({args.engine})", args.engine)):
        with using_engine(make_engine(RolloutConfig(engine=engine_name))):
            ppo_step(ctx, rc, policy, ref, optimizer, tok, next(batches))  # warm-up
            steps = [ppo_step(ctx, rc, policy, ref, optimizer, tok, next(batches)) for _ in range(args.steps)]
        row = {k: statistics.mean(s[k] for s in steps) for k in ("time_generate", "time_score", "time_update",
                                                                  "response_length")}
        row["time_step"] = row["time_generate"] + row["time_score"] + row["time_update"]
        results[name] = row
    base, ours = results.values()
    print(f"ppo_step benchmark on {device_name()}: size {args.size} ({n_params(lm) / 1e6:.1f}M params, {dtype}), "
          f"{args.questions} questions, max_length {args.max_length}, critic_shared {rc.critic_shared}, "
          f"ppo_epochs {rc.ppo_epochs}")
    print(f"  {'variant':<24} {'step s':>8} {'generate':>9} {'score':>7} {'update':>8} {'resp len':>9}")
    for name, r in results.items():
        print(f"  {name:<24} {r['time_step']:8.2f} {r['time_generate']:9.2f} {r['time_score']:7.2f} "
              f"{r['time_update']:8.2f} {r['response_length']:9.1f}")
    ratio = base["time_step"] / ours["time_step"]
    print(f"  speed-up ours vs baseline (step time): {ratio:.2f}x")
    write_json(args.json, {"benchmark": "ppo_step", "device": device_name(), "size": args.size,
                           "params": n_params(lm), "results": results, "speedup": ratio, "args": vars(args)})


if __name__ == "__main__":
    main()
