"""Every option of every config group composes and validates; config mistakes fail with key and file."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from conftest import CONF_DIR, config_groups
from omegaconf import OmegaConf

from reft_exp.config import (
    SCHEMA_SELECTOR,
    SCHEMAS,
    ConfigError,
    HubModelConfig,
    ReFTConfig,
    SFTConfig,
    TinyModelConfig,
    load_run_config,
)
from reft_exp.results import cell_id

pytestmark = pytest.mark.seconds(19)  # its measured time in `make test`: orders the collection (conftest)

# Groups selected through the defaults list of conf/config.yaml (model_method is picked automatically).
AUTO_GROUPS = {"model_method", "model_inference", "scale", "method_cot", "method_dataset_cot"}


def _load(overrides, tmp_path, conf_dir=None):
    return load_run_config([f"paths.results_dir={tmp_path}", *overrides], conf_dir)


def _cases():
    for group, options in config_groups().items():
        if group in AUTO_GROUPS:
            continue
        for option in options:
            yield group, option


@pytest.mark.parametrize("group,option", list(_cases()))
def test_every_group_option_composes_and_validates(group, option, tmp_path):
    run_cfg = _load([f"{group}={option}"], tmp_path)
    assert run_cfg.coordinates["seed"] == 42
    if group in ("model", "dataset", "cot", "method", "inference"):
        assert run_cfg.coordinates[group] == OmegaConf.load(CONF_DIR / group / f"{option}.yaml").name


def test_root_defaults_are_the_embedded_default(tmp_path):
    rc = _load([], tmp_path)
    assert rc.coordinates == {"model": "tiny", "dataset": "arith", "cot": "n", "method": "sft",
                              "inference": "greedy", "seed": 42}
    assert isinstance(rc.model, TinyModelConfig)
    assert isinstance(rc.sft, SFTConfig)


def test_tiny_override_does_not_touch_paper_defaults(tmp_path):
    tiny = _load([], tmp_path).sft
    paper = OmegaConf.load(CONF_DIR / "sft" / "default.yaml")
    assert paper.lr == 1e-5 and paper.epochs == 40 and paper.batch_size == 3 and paper.grad_accum == 2
    assert paper.warmup_ratio == 0.1 and paper.max_length == 1024 and paper.grad_clip == 1.0
    assert tiny.lr != paper.lr  # the tiny scale uses conf/scale/tiny.yaml


# every official script tokenizes without added special tokens, Galactica included (docs/text_path.md)
@pytest.mark.parametrize("model,add_special", [("galactica-6.7b", False), ("codellama-7b", False)])
def test_hub_models_follow_the_spec(model, add_special, tmp_path):
    rc = _load([f"model={model}"], tmp_path)
    assert isinstance(rc.model, HubModelConfig)
    assert rc.model.dtype == "bfloat16" and rc.model.pad_token_id == 1 and rc.model.eos_token_id == 2
    assert rc.model.add_special_tokens is add_special
    # the paper recipe applies unchanged to hub models (no model_method override file)
    assert rc.sft.lr == 1e-5 and rc.sft.epochs == 40


def _conf_copy(tmp_path, edits: dict[str, str]):
    """A copy of conf/ with ``edits`` ({file: text appended}): as if the project's YAML had a mistake."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    for name, text in edits.items():
        with open(conf / name, "a") as f:
            f.write(text)
    return conf


def _error(overrides, tmp_path, conf_dir=None) -> str:
    with pytest.raises(ConfigError) as err:
        _load(overrides, tmp_path, conf_dir)
    msg = str(err.value)
    assert "\n" not in msg  # one line
    return msg


def test_unknown_key_in_group_file_is_traced_to_that_file(tmp_path):
    conf = _conf_copy(tmp_path, {"model/tiny.yaml": "hiden_size: 3\n", "sft/default.yaml": "lrr: 0.1\n"})
    msg = _error([], tmp_path, conf)
    assert "unknown key 'model.hiden_size' in conf/model/tiny.yaml" in msg and "hidden_size" in msg
    msg = _error(["model=codellama-7b"], tmp_path, conf)  # the next typo, in the next file
    assert "unknown key 'sft.lrr' in conf/sft/default.yaml" in msg


def test_bad_value_is_traced_to_the_file_that_set_it_last(tmp_path):
    """sft.lr is in conf/sft/default.yaml and again in conf/scale/tiny.yaml (a global package, auto-selected for
    model=tiny): the later file is the one that set the bad value; a command-line override comes after both."""
    conf = _conf_copy(tmp_path, {})
    path = conf / "scale" / "tiny.yaml"
    assert "  lr: 3.0e-3\n" in path.read_text()
    path.write_text(path.read_text().replace("  lr: 3.0e-3\n", "  lr: fast\n"))
    assert "bad value for 'sft.lr' in conf/scale/tiny.yaml:" in _error([], tmp_path, conf)
    assert _load(["model=codellama-7b"], tmp_path, conf).sft.lr == 1e-5  # no scale file: the recipe's value
    assert "bad value for 'sft.lr' in the command-line override 'sft.lr=quick'" in _error(["sft.lr=quick"], tmp_path,
                                                                                           conf)


def test_unknown_key_from_the_command_line(tmp_path):
    msg = _error(["+sft.lrr=0.1"], tmp_path)
    assert "unknown key 'sft.lrr' in the command-line override '+sft.lrr=0.1'" in msg and "'lr'" in msg
    assert "unknown key 'foo'" in _error(["+foo=1"], tmp_path)


def test_missing_key_fails(tmp_path):
    msg = _error(["model=codellama-7b", "~model.path"], tmp_path)
    assert "missing value for 'model.path'" in msg


def test_bad_value_type_fails(tmp_path):
    assert "bad value for 'sft.epochs' in the command-line override 'sft.epochs=many'" in _error(
        ["sft.epochs=many"], tmp_path)


def test_schema_checks_are_one_line_config_errors(tmp_path):
    """A schema's own check (a dataclass __post_init__) is a one-line ConfigError naming key and source, not a
    ValueError traceback; so is a value outside a field's choices."""
    msg = _error(["sft.train_epochs=99"], tmp_path)
    assert msg.startswith("sft.train_epochs must be null or 1..sft.epochs (6), got 99")
    assert "command-line override 'sft.train_epochs=99'" in msg
    msg = _error(["method=reft", "method.value_head_init=bogus"], tmp_path)
    assert msg == ("method.value_head_init='bogus' (in the command-line override 'method.value_head_init=bogus') "
                   "is not one of ['default', 'zero']")
    conf = _conf_copy(tmp_path, {})
    path = conf / "method" / "reft.yaml"
    assert "\nvalue_head_init: default" in path.read_text()
    path.write_text(path.read_text().replace("\nvalue_head_init: default", "\nvalue_head_init: xavier"))
    assert "(in conf/method/reft.yaml)" in _error(["method=reft"], tmp_path, conf)
    with pytest.raises(ValueError, match="value_head_init"):  # built in code: the same check
        ReFTConfig(value_head_init="xavier")
    assert "accelerate.zero_stage=2 needs GPUs" in _error(["accelerate=zero2", "accelerate.cpu=true"], tmp_path)


def _option_with(group: str, selector_value: str) -> str:
    """The option file of ``group`` whose selector field (model.kind, method.name, ...) is ``selector_value``."""
    selector = SCHEMA_SELECTOR[group]
    return next(o for o in config_groups()[group]
                if OmegaConf.load(CONF_DIR / group / f"{o}.yaml").get(selector) == selector_value)


def _one_of_fields():
    """(group choice overrides, key, choices) for every one_of field of every group's schema, nested included."""
    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            if "choices" in f.metadata:
                yield f"{prefix}{f.name}", f.metadata["choices"]
            elif isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
                yield from walk(f.default_factory, f"{prefix}{f.name}.")

    seen = set()
    for group, options in SCHEMAS.items():
        for value, cls in options.items():
            select = [] if value == "*" else [f"{group}={_option_with(group, value)}"]
            for key, choices in walk(cls, f"{group}."):
                if key not in seen:
                    seen.add(key)
                    yield select, key, choices


ONE_OF = list(_one_of_fields())


def test_enum_fields_are_found():
    keys = {key for _, key, _ in ONE_OF}
    assert {"method.value_head_init", "method.init", "inference.checkpoint", "inference.reranker.train_sampling"
            } - keys == {"inference.reranker.train_sampling"}  # a nested node is walked, not itself a choice
    assert {"reward.extraction", "reward.mcq_partial", "rollout.engine", "logger.mode", "model.dtype",
            "accelerate.zero_stage", "cot.name", "dataset.answer_type", "dataset.source"} <= keys


@pytest.mark.parametrize("select,key,choices", ONE_OF, ids=[k for _, k, _ in ONE_OF])
def test_every_enum_field_is_checked_at_start(select, key, choices, tmp_path):
    """A value outside a field's choices fails when the config is loaded (before any training), naming the key."""
    bad = max(choices) + 1 if isinstance(choices[0], int) else "bogus"
    msg = _error([*select, f"++{key}={bad}"], tmp_path)  # ++: set or add (logger=none has no mode key)
    assert msg.startswith(f"{key}={bad!r} (in the command-line override '++{key}={bad}') is not one of")
    for good in choices:  # and every listed choice is accepted
        if key == "cot.name" or (key, good) == ("accelerate.zero_stage", 2) or good == choices[0]:
            continue  # cot.name must match dataset.warmup_epoch's keys; ZeRO needs accelerate.cpu=false
        needs = {"dataset.eval_split": ["dataset.val_size=5", "tag=val"]}.get(key, [])  # its own checks
        _load([*select, f"++{key}={good}", *needs], tmp_path)


def test_record_choices_name_the_files_that_composed_the_cell(tmp_path):
    rc = _load(["method=reft", "cot=p"], tmp_path)
    assert rc.choices["method"] == "reft" and rc.choices["scale"] == "tiny"
    assert rc.choices["model_method"] == "tiny_reft" and rc.choices["method_cot"] == "reft_p"
    assert rc.choices["method_dataset_cot"] is None  # no conf/method_dataset_cot/reft_arith_p.yaml
    assert not any(k.startswith("hydra") for k in rc.choices)


@pytest.mark.parametrize("overrides,beta", [
    (["model=codellama-7b", "dataset=gsm8k", "cot=n"], 0.05),
    (["model=codellama-7b", "dataset=gsm8k", "cot=p"], 0.01),
    (["model=galactica-6.7b", "dataset=mathqa_numeric", "cot=n"], 0.01),
    (["model=galactica-6.7b", "dataset=mathqa", "cot=n"], 0.05),
])
def test_reft_kl_coef_per_dataset_and_cot(overrides, beta, tmp_path):
    rc = _load(["method=reft", *overrides], tmp_path)
    assert rc.method.kl_coef == beta
    # the rest is the upstream recipe
    m = rc.method
    assert (m.lr, m.epochs, m.batch_size, m.ppo_epochs, m.clip_eps, m.vf_coef) == (3e-7, 300, 4, 2, 0.2, 5.0)
    assert (m.gamma, m.lam, m.top_k, m.top_p, m.temperature) == (1.0, 0.95, 0, 1.0, 1.0)
    assert (m.max_prompt_length, m.max_length, m.critic_shared) == (300, 700, True)


def test_warmup_epoch_per_dataset_and_cot(tmp_path):
    expect = {("gsm8k", "n"): 2, ("mathqa", "n"): 5, ("mathqa_numeric", "n"): 10, ("mathqa", "p"): 2}
    for (ds, cot), epoch in expect.items():
        rc = _load([f"dataset={ds}", f"cot={cot}"], tmp_path)
        assert rc.dataset.warmup_epoch[cot] == epoch


def test_self_training_and_inference_follow_the_spec_at_paper_scale(tmp_path):
    rc = _load(["model=codellama-7b", "dataset=gsm8k", "method=offline_st", "inference=rerank"], tmp_path)
    off, inf = rc.method, rc.inference
    assert off.epochs == 20 and off.max_correct_per_question == 10 and off.include_ground_truth
    for s in (off.sampling, inf.sampling, inf.reranker.train_sampling):
        assert (s.num_samples, s.temperature, s.top_k, s.top_p) == (100, 1.0, 50, 1.0)
    r = inf.reranker
    # batch per process, as the official 3 per GPU (x 8 processes = 24 a step, Rerank/_template.sh:16, 40)
    assert (r.lr, r.epochs, r.batch_size, r.max_length, r.warmup_ratio) == (1e-6, 3, 3, 700, 0.1)
    on = _load(["model=codellama-7b", "dataset=gsm8k", "method=online_st"], tmp_path).method
    assert (on.lr, on.batch_size, on.top_k, on.sample_loss_weight, on.gt_loss_weight) == (3e-7, 4, 0, 0.5, 0.5)


def test_tiny_consumers_share_their_samples_stages(tmp_path):
    """Same sampling values -> the same cached samples stage: tiny rerank's test samples are tiny voting's,
    its reranker's training samples are tiny offline self-training's."""
    vote = _load(["inference=majority_vote"], tmp_path).inference
    rerank = _load(["inference=rerank"], tmp_path).inference
    offline = _load(["method=offline_st"], tmp_path).method
    assert rerank.sampling == vote.sampling
    assert rerank.reranker.train_sampling == offline.sampling
    assert vote.sampling.num_samples < 100  # the tiny scale's own size, from conf/model_inference/


def test_a_tag_can_name_a_swept_key_so_each_value_keeps_its_record(tmp_path):
    """README: a sweep over a key outside the record's name keeps one record per value when the tag names it."""
    ids = {cell_id(_load(["experiment=smoke", "cell=reft_majority_vote", f"inference.sampling.temperature={t}",
                          "tag=T${inference.sampling.temperature}"], tmp_path)) for t in (1.0, 0.5)}
    assert ids == {"tiny__arith__p__reft__majority_vote__seed42__T1.0",
                   "tiny__arith__p__reft__majority_vote__seed42__T0.5"}
