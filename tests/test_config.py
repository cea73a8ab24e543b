"""Every option of every config group composes and validates; config mistakes fail with key and file."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR, compose, config_groups
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from reft_exp.config import ConfigError, HubModelConfig, SFTConfig, TinyModelConfig, validate

# Groups selected through the defaults list of conf/config.yaml (model_method is picked automatically).
AUTO_GROUPS = {"model_method", "model_inference", "scale", "method_cot", "method_dataset_cot"}


def _split(cfg):
    """As inside the app: HydraConfig set, the hydra node removed from the job config."""
    HydraConfig.instance().set_config(cfg)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def _validate(cfg):
    return validate(*_split(cfg))


def _cases():
    for group, options in config_groups().items():
        if group in AUTO_GROUPS:
            continue
        for option in options:
            yield group, option


@pytest.mark.parametrize("group,option", list(_cases()))
def test_every_group_option_composes_and_validates(group, option, tmp_path):
    cfg = compose([f"{group}={option}"], tmp_path)
    run_cfg = _validate(cfg)
    assert run_cfg.coordinates["seed"] == 42
    if group in ("model", "dataset", "cot", "method", "inference"):
        assert run_cfg.coordinates[group] == OmegaConf.load(CONF_DIR / group / f"{option}.yaml").name


def test_root_defaults_are_the_embedded_default(tmp_path):
    rc = _validate(compose([], tmp_path))
    assert rc.coordinates == {"model": "tiny", "dataset": "arith", "cot": "n", "method": "sft",
                              "inference": "greedy", "seed": 42}
    assert isinstance(rc.model, TinyModelConfig)
    assert isinstance(rc.sft, SFTConfig)


def test_tiny_override_does_not_touch_paper_defaults(tmp_path):
    tiny = _validate(compose([], tmp_path)).sft
    paper = OmegaConf.load(CONF_DIR / "sft" / "default.yaml")
    assert paper.lr == 1e-5 and paper.epochs == 40 and paper.batch_size == 3 and paper.grad_accum == 2
    assert paper.warmup_ratio == 0.1 and paper.max_length == 1024 and paper.grad_clip == 1.0
    assert tiny.lr != paper.lr  # the tiny scale uses conf/scale/tiny.yaml


@pytest.mark.parametrize("model,add_special", [("galactica-6.7b", True), ("codellama-7b", False)])
def test_hub_models_follow_the_spec(model, add_special, tmp_path):
    rc = _validate(compose([f"model={model}"], tmp_path))
    assert isinstance(rc.model, HubModelConfig)
    assert rc.model.dtype == "bfloat16" and rc.model.pad_token_id == 1 and rc.model.eos_token_id == 2
    assert rc.model.add_special_tokens is add_special
    # the paper recipe applies unchanged to hub models (no model_method override file)
    assert rc.sft.lr == 1e-5 and rc.sft.epochs == 40


def test_unknown_key_names_key_and_file(tmp_path):
    cfg, choices = _split(compose([], tmp_path))
    OmegaConf.set_struct(cfg, False)
    cfg.sft.lrr = 0.1  # as if conf/sft/default.yaml had a typo
    with pytest.raises(ConfigError) as err:
        validate(cfg, choices)
    assert "sft.lrr" in str(err.value) and "conf/" in str(err.value)


def test_unknown_key_in_group_file_is_traced_to_that_file(tmp_path, monkeypatch):
    import shutil

    from reft_exp import config as config_mod

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    with open(conf / "model" / "tiny.yaml", "a") as f:
        f.write("hiden_size: 3\n")  # a typo in a group file
    monkeypatch.setattr(config_mod, "CONF_DIR", conf)
    cfg = compose([], tmp_path, conf_dir=conf)
    with pytest.raises(ConfigError) as err:
        _validate(cfg)
    assert "model.hiden_size" in str(err.value) and "conf/model/tiny.yaml" in str(err.value)


def test_missing_key_fails(tmp_path):
    cfg, choices = _split(compose(["model=codellama-7b"], tmp_path))
    OmegaConf.set_struct(cfg, False)
    del cfg.model["path"]
    with pytest.raises(ConfigError) as err:
        validate(cfg, choices)
    assert "model.path" in str(err.value) and "missing" in str(err.value)


def test_bad_value_type_fails(tmp_path):
    cfg = compose(["sft.epochs=many"], tmp_path)
    with pytest.raises(ConfigError) as err:
        _validate(cfg)
    assert "sft.epochs" in str(err.value)


@pytest.mark.parametrize("overrides,beta", [
    (["model=codellama-7b", "dataset=gsm8k", "cot=n"], 0.05),
    (["model=codellama-7b", "dataset=gsm8k", "cot=p"], 0.01),
    (["model=galactica-6.7b", "dataset=mathqa_numeric", "cot=n"], 0.01),
    (["model=galactica-6.7b", "dataset=mathqa", "cot=n"], 0.05),
])
def test_reft_kl_coef_per_dataset_and_cot(overrides, beta, tmp_path):
    rc = _validate(compose(["method=reft", *overrides], tmp_path))
    assert rc.method.kl_coef == beta
    # the rest is the upstream recipe
    m = rc.method
    assert (m.lr, m.epochs, m.batch_size, m.ppo_epochs, m.clip_eps, m.vf_coef) == (3e-7, 300, 4, 2, 0.2, 5.0)
    assert (m.gamma, m.lam, m.top_k, m.top_p, m.temperature) == (1.0, 0.95, 0, 1.0, 1.0)
    assert (m.max_prompt_length, m.max_length, m.critic_shared) == (300, 700, True)


def test_warmup_epoch_per_dataset_and_cot(tmp_path):
    expect = {("gsm8k", "n"): 2, ("mathqa", "n"): 5, ("mathqa_numeric", "n"): 10, ("mathqa", "p"): 2}
    for (ds, cot), epoch in expect.items():
        rc = _validate(compose([f"dataset={ds}", f"cot={cot}"], tmp_path))
        assert rc.dataset.warmup_epoch[cot] == epoch


def test_self_training_and_inference_follow_the_spec_at_paper_scale(tmp_path):
    rc = _validate(compose(["model=codellama-7b", "dataset=gsm8k", "method=offline_st", "inference=rerank"],
                           tmp_path))
    off, inf = rc.method, rc.inference
    assert off.epochs == 20 and off.max_correct_per_question == 10 and off.include_ground_truth
    for s in (off.sampling, inf.sampling, inf.reranker.train_sampling):
        assert (s.num_samples, s.temperature, s.top_k, s.top_p) == (100, 1.0, 50, 1.0)
    r = inf.reranker
    assert (r.lr, r.epochs, r.batch_size, r.max_length, r.warmup_ratio) == (1e-6, 3, 24, 700, 0.1)
    on = _validate(compose(["model=codellama-7b", "dataset=gsm8k", "method=online_st"], tmp_path)).method
    assert (on.lr, on.batch_size, on.top_k, on.sample_loss_weight, on.gt_loss_weight) == (3e-7, 4, 0, 0.5, 0.5)


def test_tiny_consumers_share_their_samples_stages(tmp_path):
    """Same sampling values -> the same cached samples stage: tiny rerank's test samples are tiny voting's,
    its reranker's training samples are tiny offline self-training's."""
    vote = _validate(compose(["inference=majority_vote"], tmp_path)).inference
    rerank = _validate(compose(["inference=rerank"], tmp_path)).inference
    offline = _validate(compose(["method=offline_st"], tmp_path)).method
    assert rerank.sampling == vote.sampling
    assert rerank.reranker.train_sampling == offline.sampling
    assert vote.sampling.num_samples < 100  # the tiny scale's own size, from conf/model_inference/
