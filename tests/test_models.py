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
