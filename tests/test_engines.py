"""Rollout engines (reft_exp.engines): ``hf_static`` (static KV cache) and ``hf`` with its buffered dynamic cache
give what plain ``generate`` gives."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from reft_exp.config import RolloutConfig, TinyModelConfig
from reft_exp.data.arith import generate_arith
from reft_exp.engines import (
    BufferedCache,
    HFEngine,
    HFStaticEngine,
    VLLMEngine,
    default_engine,
    make_engine,
    preallocated_cache,
    using_engine,
)
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


def _plain():
    return HFEngine(RolloutConfig(engine="hf", preallocate_cache=False))


@pytest.mark.parametrize("capacity", [None, 7])  # None: prompt + max new tokens (never grows); 7: grows by 7s
def test_buffered_cache_gives_what_the_concatenating_cache_gives(tiny, monkeypatch, capacity):
    """Greedy and sampled outputs with the same seed are identical token for token, and the buffered cache is
    the one generate used: its buffer holds prompt + generated positions without a reallocation per step."""
    model, tok, records = tiny
    prompts = [build_prompt(r["question"], "n") for r in records[:12]]
    caches = []
    engine = HFEngine()
    make = preallocated_cache

    def spy(model_, cap):
        caches.append(make(model_, capacity or cap))
        return caches[-1]

    monkeypatch.setattr("reft_exp.engines.preallocated_cache", spy)
    greedy = DecodingConfig(do_sample=False, max_new_tokens=24)
    assert generate_texts(model, tok, prompts, greedy, 5, engine=engine) == \
        generate_texts(model, tok, prompts, greedy, 5, engine=_plain())
    sampled = DecodingConfig(do_sample=True, temperature=1.0, top_k=50, max_new_tokens=24, num_return_sequences=4)
    torch.manual_seed(3)
    ours = generate_texts(model, tok, prompts, sampled, 5, engine=engine)
    torch.manual_seed(3)
    assert ours == generate_texts(model, tok, prompts, sampled, 5, engine=_plain())
    assert len({t for o in ours for t in o}) > 12  # the samples differ: the comparison can fail
    assert len(caches) == 6 and all(isinstance(c, BufferedCache) for c in caches)
    layer = caches[-1].layers[0]
    assert layer._n == caches[-1].get_seq_length() > 0
    step = capacity or layer.capacity
    assert layer._k.shape[-2] == step * -(-layer._n // step)  # the buffer: the positions used, rounded up to a step
    assert layer._k.shape[0] == 2 * 4  # the last batch: 2 prompts x 4 samples


def test_samples_are_the_same_on_one_thread_or_two(tiny):
    """`make demo` draws its vote samples on one torch thread per cell, two cells at a time (Makefile,
    DEMO_SAMPLE_CELLS): the samples must be those of one cell on two threads. The demo's vote shape: 2 prompts x 32
    samples a call, top_k 50, temperature 1."""
    model, tok, records = tiny
    prompts = [build_prompt(r["question"], "n") for r in records[:4]]
    sampled = DecodingConfig(do_sample=True, temperature=1.0, top_k=50, max_new_tokens=32, num_return_sequences=32)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(11)
            outs.append(generate_texts(model, tok, prompts, sampled, 2))
    finally:
        torch.set_num_threads(before)
    assert outs[0] == outs[1]
    assert len({t for o in outs[0] for t in o}) > 32  # the samples differ: the comparison can fail


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


@pytest.mark.parametrize("engine_name", ["hf", "hf_static"])
def test_float32_master_weights_generate_in_the_mixed_precision(tiny, engine_name):
    """A trained model holds float32 master weights (reft_exp.models.trainable_dtype); under
    accelerate.mixed_precision=bf16 its generate computes in bf16 (the engines autocast), as its training forward
    does; without mixed precision, or with weights already in bf16, nothing is cast."""
    model, tok, records = tiny
    prompts = [build_prompt(r["question"], "n") for r in records[:3]]
    decoding = DecodingConfig(do_sample=False, max_new_tokens=4)
    rollout = RolloutConfig(engine=engine_name, compile=False)

    def linear_out_dtypes(m, mixed_precision: str) -> set:
        seen: set = set()
        hook = m.model.layers[0].mlp.down_proj.register_forward_hook(lambda mod, i, out: seen.add(out.dtype))
        try:
            generate_texts(m, tok, prompts, decoding, batch_size=3, engine=make_engine(rollout, mixed_precision))
        finally:
            hook.remove()
        return seen

    assert linear_out_dtypes(model, "bf16") == {torch.bfloat16}
    assert linear_out_dtypes(model, "no") == {torch.float32}
    bf16_model = load_causal_lm(tok.name_or_path, TinyModelConfig(name="tiny", kind="tiny", dtype="bfloat16"))
    assert linear_out_dtypes(bf16_model, "bf16") == {torch.bfloat16}
    assert next(bf16_model.parameters()).dtype == torch.bfloat16
