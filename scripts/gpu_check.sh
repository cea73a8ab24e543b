#!/usr/bin/env bash
# GPU check of the real code path, one command, offline, about 9 minutes on one H100:
#   1. installs what the GPU image lacks (hydra-core, omegaconf, antlr4, ...) from .whl/ into /tmp/site;
#   2. runs benchmarks/rollout.py (hf_static, and hf's buffered KV cache, against plain generate), ppo_step.py
#      and sft.py at --size 1b (random-init Llama, bf16);
#   3. runs a short SFT -> ReFT cell on the ~100M random-init model (model=llama-100m, rollout=hf_static);
#   4. prints a short table and writes JSON under $OUT (default results/gpu_check).
# Prepare on the CPU host first (needs the network there, not on the GPU machine):
#   bash scripts/gpu_check.sh --prepare     # .whl/ (../shared/tools/device-wheels.sh) + .gpu_shared/ (GSM8K)
# then on the GPU machine, from the repo root with .whl and .gpu_shared carried along:
#   bash scripts/gpu_check.sh               # SIZE=7b / SKIP_REFT=1 / PYTHON=... to change
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ "${1:-}" == "--prepare" ]]; then
  bash "$ROOT/../shared/tools/device-wheels.sh"
  grep -qx '/.gpu_shared/' .git/info/exclude 2>/dev/null || echo '/.gpu_shared/' >> .git/info/exclude
  mkdir -p .gpu_shared/data && cp -r "$ROOT/../shared/data/gsm8k" .gpu_shared/data/
  du -sh .whl .gpu_shared
  exit 0
fi

PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/results/gpu_check}
SIZE=${SIZE:-1b}
mkdir -p "$OUT"
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_check: hydra/omegaconf missing and no .whl/ (run --prepare)"; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
if [[ -z "${REFT_SHARED_DIR:-}" ]]; then
  if [[ -d "$ROOT/.gpu_shared/data/gsm8k" ]]; then export REFT_SHARED_DIR=$ROOT/.gpu_shared
  else export REFT_SHARED_DIR=$ROOT/../shared; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

run() {  # name, timeout seconds, command...: a failed or slow step is reported, the others still run
  local name=$1 limit=$2; shift 2
  echo "== $name"
  if timeout "$limit" "$@" 2>&1 | grep -v "Loading weights\|Writing model" | tee "$OUT/$name.log"; then
    echo "$name ok" >> "$OUT/status.txt"
  else
    echo "$name FAILED (see $name.log)" >> "$OUT/status.txt"
  fi
}
: > "$OUT/status.txt"
run rollout 150 "$PY" benchmarks/rollout.py --size "$SIZE" --prompts 128 --batch-size 64 --max-new-tokens 256 \
  --json "$OUT/rollout.json"
run rollout_hf 150 "$PY" benchmarks/rollout.py --size "$SIZE" --engine hf --prompts 128 --batch-size 64 \
  --max-new-tokens 256 --json "$OUT/rollout_hf.json"
run ppo_step 150 "$PY" benchmarks/ppo_step.py --size "$SIZE" --questions 32 --max-length 700 \
  --json "$OUT/ppo_step.json"
run sft 60 "$PY" benchmarks/sft.py --size "$SIZE" --batch-size 8 --steps 10 --json "$OUT/sft.json"
if [[ -z "${SKIP_REFT:-}" ]]; then
  RES=/tmp/gpu_check_results
  run reft_100m 150 "$PY" -m reft_exp.run model=llama-100m method=reft rollout=hf_static accelerate=gpu_bf16 \
    paths.results_dir=$RES overwrite=true progress=false dataset.train_size=2000 dataset.test_size=200 \
    dataset.warmup_epoch.n=1 sft.epochs=1 sft.lr=3e-4 sft.batch_size=32 sft.grad_accum=1 sft.max_length=256 \
    sft.length_bucketing=true sft.eval_batch_size=200 inference.max_new_tokens=128 method.epochs=1 \
    method.max_questions=256 method.batch_size=32 method.lr=1e-5 method.max_length=300 \
    method.max_prompt_length=200 method.eval_batch_size=200
  cp "$RES"/runs/*.json "$OUT/reft_record.json" 2>/dev/null || true
fi

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None
rows = []
for name in ("rollout", "rollout_hf"):
    if (r := load(name)):
        rows.append(("rollout tokens/s plain -> " + r["ours"]["engine"], f"{r['baseline']['tokens_per_s']:.0f} -> "
                     f"{r['ours']['tokens_per_s']:.0f} ({r['ratio']:.2f}x, identical {r['identical_outputs']}/{r['prompts']})"))
if (r := load("ppo_step")):
    (b, bv), (o, ov) = r["results"].items()
    rows.append(("ppo_step s (32 q) baseline -> ours", f"{bv['time_step']:.1f} -> {ov['time_step']:.1f} "
                 f"({r['speedup']:.2f}x; generate {bv['time_generate']:.1f} -> {ov['time_generate']:.1f})"))
if (r := load("sft")):
    a, b = r["rows"]
    mfu = lambda x: f", MFU {100 * x['mfu']:.1f}%" if x["mfu"] else ""
    rows.append(("sft non-pad tokens/s shuffled -> bucketed", f"{a['tokens_per_s']:.0f}{mfu(a)} -> "
                 f"{b['tokens_per_s']:.0f}{mfu(b)} ({r['ratio']:.2f}x)"))
if (r := load("reft_record")):
    t = r.get("timings_s") or {}
    rows.append(("ReFT llama-100m accuracy", f"{r.get('accuracy')} (total {t.get('total', float('nan')):.0f} s)"))
width = max((len(k) for k, _ in rows), default=10)
print("\n== gpu_check summary")
for k, v in rows:
    print(f"{k:<{width}}  {v}")
print((out / "status.txt").read_text())
json.dump(dict(rows), open(out / "summary.json", "w"), indent=2)
EOF
