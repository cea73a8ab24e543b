"""Shared pieces of the GPU-path benchmarks: model sizes, GSM8K records, the tokenizer, timing.

Sizes are Llama configs with random weights (no download): ``cpu`` is the embedded tiny model, ``100m``
the ``conf/model/llama-100m.yaml`` shape, ``1b`` the TinyLlama-1.1B shape and ``7b`` the Llama-2-7B /
CodeLlama-7B shape. The tokenizer is the project's tiny-model recipe (digits split, byte-level BPE) trained on
the GSM8K training text, so sequence lengths follow real GSM8K questions and solutions.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from reft_exp.config import TinyModelConfig  # noqa: E402
from reft_exp.utils import read_jsonl  # noqa: E402

# hidden, intermediate, layers, heads, kv heads, tokenizer vocab (BPE stops earlier if the text runs out)
SIZES = {
    "cpu": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=4, vocab_size=512),
    "100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=14, num_attention_heads=12,
                 num_key_value_heads=12, vocab_size=512),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
}
# bf16 dense peak of the card, for MFU (H100 SXM 989 TFLOP/s; H200 the same compute)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def shared_dir() -> Path:
    return Path(os.environ.get("REFT_SHARED_DIR", REPO_ROOT.parent / "shared"))


def gsm8k_records(split: str = "train", limit: int | None = None) -> list[dict]:
    """Original GSM8K (``$REFT_SHARED_DIR/data/gsm8k``) in the upstream schema (N-CoT)."""
    from reft_exp.data.gsm8k_original import convert_gsm8k

    path = shared_dir() / "data" / "gsm8k" / f"{split}.jsonl"
    if not path.exists():
        raise SystemExit(f"GSM8K not found at {path}; set REFT_SHARED_DIR")
    raw = read_jsonl(path)
    return convert_gsm8k(raw[:limit], origin=f"GSM8K {split}.jsonl")


def model_config(size: str) -> TinyModelConfig:
    return TinyModelConfig(name=f"bench-{size}", kind="tiny", **SIZES[size])


def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def build_tokenizer(size: str, records: list[dict]):
    from reft_exp.models import train_tiny_tokenizer

    texts = ["Question:\nAnswer reasoning:\nTherefore, the answer is: 0123456789"]
    texts += [t for r in records for t in (r["question"], r["answer_cot"])]
    return train_tiny_tokenizer(texts, model_config(size))


def build_model(size: str, tokenizer, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A random-init Llama of ``size``, created directly on ``device`` in ``dtype`` (no checkpoint)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model_config(size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=2048, tie_word_embeddings=True,
        pad_token_id=cfg.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=cfg.eos_token_id,
    )
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.generation_config.eos_token_id = cfg.eos_token_id
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    """``(result, seconds)`` of ``fn()``, device work included."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"


def peak_tflops(override: float | None) -> float | None:
    if override:
        return override
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
