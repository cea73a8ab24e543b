"""Rollout engines (reft_exp.engines): ``hf_static`` (static KV cache) gives what plain ``hf`` gives."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from reft_exp.config import RolloutConfig, TinyModelConfig
from reft_exp.data.arith import generate_arith
from reft_exp.engines import HFEngine, HFStaticEngine, VLLMEngine, default_engine, make_engine, using_engine
from reft_exp.generation import DecodingConfig, generate_texts
from reft_exp.models import build_tiny_model, load_causal_lm, load_tokenizer
from reft_exp.prompts import build_prompt
from reft_exp.rl.rollout import sample_rollout

CFG = TinyModelConfig(name="tiny", kind="tiny")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_engines")
    train = generate_arith(5, 300, 20, "n")
    texts = [t for r in train["train"] for t in (r["question"], r["answer_cot"])]
    build_tiny_model(folder, texts, CFG)
    torch.manual_seed(0)
    model = load_causal_lm(folder, CFG)
    with torch.no_grad():  # sharper logits than the init's, so responses differ and some stop at EOS
        for p in model.parameters():
            p.mul_(3.0)
    return model, load_tokenizer(folder, CFG), train["test"]


def _static():
    return HFStaticEngine(RolloutConfig(engine="hf_static", compile=False, cache_pad_multiple=32))


def test_static_cache_greedy_matches_hf(tiny):
    model, tok, records = tiny
    prompts = [build_prompt(r["question"], "n") for r in records[:12]]
    decoding = DecodingConfig(do_sample=False, max_new_tokens=24)
    ref = generate_texts(model, tok, prompts, decoding, batch_size=5, engine=HFEngine())
    model._previous_max_cache_length = -1
    out = generate_texts(model, tok, prompts, decoding, batch_size=5, engine=_static())
    # the static-cache path ran: its cache was sized to the rounded-up length (a multiple of 32)
    assert model._previous_max_cache_length > 0 and model._previous_max_cache_length % 32 == 0
    assert out == ref
    assert len({o[0] for o in ref}) > 3  # not one degenerate completion for every prompt


def test_static_cache_sampling_matches_hf_with_same_seed(tiny):
    model, tok, records = tiny
    torch.manual_seed(7)
    ro_hf = sample_rollout(model, tok, records[:6], "n", max_length=80, temperature=0.9, top_k=20, top_p=0.9,
                           engine=HFEngine())
    torch.manual_seed(7)
    ro_static = sample_rollout(model, tok, records[:6], "n", max_length=80, temperature=0.9, top_k=20,
                               top_p=0.9, engine=_static())
    assert ro_static.completions == ro_hf.completions
    assert torch.equal(ro_static.input_ids, ro_hf.input_ids)
    assert torch.equal(ro_static.response_mask, ro_hf.response_mask)


def test_default_engine_and_selection(monkeypatch):
    assert default_engine().name == "hf"
    with using_engine(make_engine(RolloutConfig(engine="hf_static"))):
        assert default_engine().name == "hf_static"
    assert default_engine().name == "hf"
    with pytest.raises(ValueError, match="not one of"):
        make_engine(RolloutConfig(engine="nope"))
    installed = importlib.util.find_spec("vllm") is not None
    if installed:  # the engine is built lazily (no model, no GPU yet) and keeps its settings
        engine = make_engine(RolloutConfig(engine="vllm", vllm_gpu_memory_utilization=0.25))
        assert (type(engine), engine.name, engine.cfg.vllm_gpu_memory_utilization) == (VLLMEngine, "vllm", 0.25)
    # without the package (as here when it is not installed): a clear message, whatever this machine has
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match="rollout.engine=vllm: vllm is not installed"):
        make_engine(RolloutConfig(engine="vllm"))
