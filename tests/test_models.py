"""The tiny model and its tokenizer load through the same from_pretrained path as a hub model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reft_exp.config import ConfigError, HubModelConfig, TinyModelConfig
from reft_exp.data.arith import generate_arith
from reft_exp.models import build_tiny_model, load_causal_lm, load_tokenizer
from reft_exp.prompts import build_prompt, build_target


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    splits = {cot: generate_arith(11, 400, 0, cot)["train"] for cot in ("n", "p")}
    texts = [t for cot in splits for r in splits[cot] for t in (r["question"], r["answer_cot"])]
    build_tiny_model(folder, texts, TinyModelConfig(name="tiny", kind="tiny"))
    return folder, splits


def test_tokenizer_round_trips_and_splits_digits(tiny_dir):
    folder, splits = tiny_dir
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.pad_token_id == 1 and tok.eos_token_id == 2
    for cot in ("n", "p"):
        for r in splits[cot][:50]:
            text = build_prompt(r["question"], cot) + build_target(r, cot)
            assert tok.decode(tok(text)["input_ids"]) == text
    pieces = tok.tokenize("He has 128 apples")
    assert [p for p in pieces if p.strip("Ġ").isdigit()] == ["1", "2", "8"]


def test_pcot_header_in_the_prompt_ends_on_a_token_boundary(tiny_dir):
    """RL and sampling prompts end with the P-CoT header; SFT saw header + body as one text. The body must
    tokenize the same either way, else the model samples from a prompt ending mid-token (regression: the
    model then wrote a second `def solution():`)."""
    folder, splits = tiny_dir
    tok = AutoTokenizer.from_pretrained(folder)
    for r in splits["p"][:50]:
        with_header = build_prompt(r["question"], "p", with_header=True)
        full = build_prompt(r["question"], "p") + build_target(r, "p")
        assert full.startswith(with_header)
        head, whole = tok(with_header)["input_ids"], tok(full)["input_ids"]
        assert whole[: len(head)] == head


def test_tiny_model_loads_via_auto_classes(tiny_dir):
    folder, _ = tiny_dir
    model = AutoModelForCausalLM.from_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n_params < 2e6
    cfg = TinyModelConfig(name="tiny", kind="tiny")
    tok = load_tokenizer(folder, cfg)
    m = load_causal_lm(folder, cfg)
    ids = torch.tensor([tok("Question:\nTom has 3 apples.")["input_ids"]])
    assert m(input_ids=ids).logits.shape[-1] == len(tok)


def test_missing_model_path_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_causal_lm("/nonexistent/model", TinyModelConfig(name="tiny", kind="tiny"))


def test_hub_model_that_cannot_be_loaded_is_one_config_error_naming_the_ways_out(monkeypatch):
    """Offline and not cached (an id no cache holds): one line with the model id, the cache and model.path, not an
    OSError traceback (the app-level case, model=codellama-7b with an empty HF_HOME: tests/test_real_model.py)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = HubModelConfig(name="codellama-7b", kind="hub", path="reft-exp-tests/no-such-model")
    for load in (load_tokenizer, load_causal_lm):
        with pytest.raises(ConfigError) as err:
            load(cfg.path, cfg)
        msg = str(err.value)
        assert "\n" not in msg and "'reft-exp-tests/no-such-model' cannot be loaded" in msg
        assert "Hugging Face cache" in msg and "model.path=<folder>" in msg


def test_trained_weights_are_float32_master_weights_outside_deepspeed(tiny_dir, tmp_path):
    """AdamW updates a weight in the weight's dtype: one step at the paper's SFT lr (1e-5) on bfloat16 weights
    leaves most of them exactly as they were (the step is below bf16's rounding), while float32 master weights
    all move. So a trained model loads in float32 unless DeepSpeed keeps the master weights (ZeRO 2 / 3); frozen
    models keep the configured dtype."""
    from reft_exp.config import AccelerateConfig
    from reft_exp.models import trainable_dtype

    folder, _ = tiny_dir
    bf16 = TinyModelConfig(name="tiny", kind="tiny", dtype="bfloat16")
    plain, zero2 = AccelerateConfig(name="gpu_bf16", mixed_precision="bf16"), AccelerateConfig(name="z", zero_stage=2)
    assert (trainable_dtype(bf16, plain), trainable_dtype(bf16, zero2)) == ("float32", "bfloat16")
    assert load_causal_lm(folder, bf16).dtype == torch.bfloat16  # frozen / sampling: as configured

    def share_moved(dtype: str) -> float:
        model = load_causal_lm(folder, bf16, dtype)
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
        ids = torch.randint(3, 100, (4, 16), generator=torch.Generator().manual_seed(0))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        moved = sum((p.detach() != b).sum().item() for p, b in zip(model.parameters(), before))
        return moved / sum(b.numel() for b in before)

    master, bf16_weights = share_moved(trainable_dtype(bf16, plain)), share_moved("bfloat16")
    print(f"share of weights moved by one AdamW step at lr 1e-5: float32 {master:.3f}, bfloat16 {bf16_weights:.3f}")
    assert master > 0.9 and bf16_weights < 0.5

    # the checkpoint of master weights is written in the configured dtype, as the official bf16 runs write theirs
    from accelerate import Accelerator
    from safetensors import safe_open

    from reft_exp.checkpoint import save_model

    trained = load_causal_lm(folder, bf16, "float32")
    save_model(Accelerator(cpu=True), trained, load_tokenizer(folder, bf16), tmp_path / "ckpt", bf16.dtype)
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert load_causal_lm(tmp_path / "ckpt", bf16, "float32").dtype == torch.float32
