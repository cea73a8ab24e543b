"""Typed config nodes and validation.

Hydra composes plain YAML from ``conf/``; :func:`validate` then merges each group node into its dataclass
schema (picked by the node's ``kind``/``name``) so that an unknown or missing key fails at start with a
message naming the key and the YAML file it came from. Code downstream only sees the typed objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A config problem, reported as one line that names the key and the file."""


# ----------------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = MISSING
    kind: str = MISSING  # tiny | hub
    dtype: str = "float32"  # float32 | bfloat16 | float16
    pad_token_id: int = 1  # upstream forces pad id 1 and eos id 2
    eos_token_id: int = 2
    add_special_tokens: bool = True  # CodeLlama: False (upstream)
    gradient_checkpointing: bool = False


@dataclass
class TinyModelConfig(ModelConfig):
    """A small Llama built from this config (random init) plus a tokenizer trained on the task text."""

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    init_seed: int = 0
    tokenizer_min_frequency: int = 1


@dataclass
class HubModelConfig(ModelConfig):
    """A pretrained model loaded with ``from_pretrained`` (hub id or local folder)."""

    path: str = MISSING
    revision: str | None = None
    trust_remote_code: bool = False


# --------------------------------------------------------------------------------------------- dataset
@dataclass
class DatasetConfig:
    name: str = MISSING
    kind: str = MISSING  # arith | upstream
    answer_type: str = "numeric"  # numeric | mcq
    # SFT epoch whose checkpoint is the warm-up for ReFT / self-training, per CoT style (upstream: 2,
    # MathQA-MCQ N-CoT 5, MathQA-numeric N-CoT 10).
    warmup_epoch: dict[str, int] = field(default_factory=lambda: {"n": 2, "p": 2})
    train_limit: int | None = None  # keep only the first N records (smoke runs); None = all
    test_limit: int | None = None


@dataclass
class ArithDatasetConfig(DatasetConfig):
    """The generated arithmetic word-problem task (embedded default)."""

    seed: int = 1234
    train_size: int = 4000
    test_size: int = 300
    min_steps: int = 1
    max_steps: int = 2
    max_start: int = 20  # largest starting quantity
    max_operand: int = 9  # largest number added/removed/multiplied per step
    distractor_prob: float = 0.3
    max_answer: int = 200  # problems whose intermediate values leave [0, max_answer] are redrawn


@dataclass
class UpstreamDatasetConfig(DatasetConfig):
    """A dataset in the upstream ReFT file layout: ``<stem>_nl.json``, ``<stem>_python_sdp.json``,
    ``<stem>_test_set.json``."""

    file_stem: str = MISSING
    data_dir: str | None = None  # a local folder holding the files; searched first
    base_url: str | None = None  # where to download missing files from; None = never download
    cache_dir: str = MISSING
    source: str = "upstream"  # upstream | gsm8k_original (GSM8K N-CoT from the original release)
    # source=gsm8k_original: the folder holding the original GSM8K ``train.jsonl`` (searched before
    # data_dir and the cache) and the URL of the folder to download it from (openai/grade-school-math).
    gsm8k_original_dir: str | None = None
    gsm8k_original_url: str | None = None
    download_timeout_s: float = 60.0  # per download (urllib socket timeout)


# ------------------------------------------------------------------------------------------------- cot
@dataclass
class CotConfig:
    name: str = MISSING  # n | p


# ---------------------------------------------------------------------------------------------- method
@dataclass
class MethodConfig:
    """``method=sft``: nothing of its own; the recipe is the root ``sft`` node."""

    name: str = MISSING


@dataclass
class SFTConfig:
    """The SFT recipe (upstream ``train_sft_model.py`` defaults), shared by every method's warm-up."""

    epochs: int = 40
    # Train only the first N epochs of the `epochs`-long schedule (the lr schedule still spans `epochs`), e.g.
    # when only the warm-up checkpoint (epoch 2 of 40 upstream, lr still ramping up) is needed. null = all.
    train_epochs: int | None = None
    lr: float = 1e-5
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    warmup_ratio: float = 0.1  # linear schedule, 10% warm-up
    batch_size: int = 3  # per device
    grad_accum: int = 2
    max_length: int = 1024
    grad_clip: float = 1.0
    eval_every_epochs: int = 1
    eval_batch_size: int = 64
    save_best: bool = True
    log_every_steps: int = 50
    # Batches of similar length (shuffled buckets, then shuffled batches): less padding, same examples per
    # epoch. false = upstream's plain shuffled batches (reft_exp.batching.LengthBucketBatchSampler).
    length_bucketing: bool = False
    length_bucketing_pool: int = 50  # a bucket pools this many batches before sorting by length

    def __post_init__(self):
        if self.train_epochs is not None and not 1 <= self.train_epochs <= self.epochs:
            raise ValueError(f"sft.train_epochs must be null or 1..sft.epochs ({self.epochs}), "
                             f"got {self.train_epochs}")

    @property
    def last_epoch(self) -> int:
        """The last epoch this run trains: ``train_epochs`` of the ``epochs``-long schedule, or all of it."""
        return self.epochs if self.train_epochs is None else self.train_epochs


@dataclass
class RLLoopConfig:
    """What ReFT and online self-training share: init, optimiser, one sampled response per question per
    step, lengths, evaluation (upstream ``train_rl_reft.py`` defaults; online self-training reuses them)."""

    name: str = MISSING
    init: str = "warmup"  # which SFT checkpoint starts the run (policy, reference, critic): warmup | best
    epochs: int = 300
    lr: float = 3e-7  # constant (no schedule), upstream
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    batch_size: int = 4  # questions per device per step (upstream 4 x 8 GPUs = 32), one sample each
    grad_clip: float = 1.0
    max_questions: int | None = None  # RL on the first N training questions only (smoke/tests); None = all
    max_prompt_length: int = 300  # longer prompts are dropped from RL training
    max_length: int = 700  # prompt + response
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    disable_dropout: bool = True
    eval_every_epochs: int = 1
    eval_batch_size: int = 64
    log_every_steps: int = 1
    save_best: bool = True


@dataclass
class ReFTConfig(RLLoopConfig):
    """ReFT = PPO from the SFT warm-up checkpoint (upstream ``train_rl_reft.py`` defaults)."""

    name: str = "reft"
    ppo_epochs: int = 2  # PPO epochs per rollout batch, one minibatch each
    clip_eps: float = 0.2
    vf_clip: float = 0.2
    vf_coef: float = 5.0
    kl_coef: float = 0.05  # beta: 0.05 N-CoT, 0.01 P-CoT and MathQA-numeric N-CoT (conf/method_cot, ...)
    gamma: float = 1.0  # discount (the paper's text swaps the names of gamma and lambda)
    lam: float = 0.95  # GAE lambda
    whiten_advantages: bool = True  # over the whole global batch (all processes), once per rollout
    critic_shared: bool = True  # value head on the policy backbone; false = separate value model (ablation)
    value_head_init: str = "default"  # default: nn.Linear's random init (upstream) | zero: V = 0 at the start

    def __post_init__(self):
        if self.value_head_init not in ("default", "zero"):
            raise ValueError(f"method.value_head_init must be 'default' or 'zero', got {self.value_head_init!r}")


@dataclass
class SamplingConfig:
    """K sampled completions per question (a cached ``samples`` stage; every consumer with the same values
    reuses it). Upstream: 100 samples, temperature 1, top_k 50 for offline self-training, voting, reranking."""

    num_samples: int = 100
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    max_new_tokens: int = 400
    batch_size: int = 16  # prompts per generate call (x num_samples sequences)
    max_questions: int | None = None  # sample only the first N questions of the split; None = all


@dataclass
class OfflineSTConfig:
    """Offline self-training: warm-up samples on the train split -> <= N unique correct per question + the
    ground truth -> fine-tune the BASE model with the SFT recipe (``sft`` node) for ``epochs`` epochs."""

    name: str = "offline_st"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_correct_per_question: int = 10
    include_ground_truth: bool = True
    epochs: int = 20  # replaces sft.epochs; everything else is the SFT recipe


@dataclass
class OnlineSTConfig(RLLoopConfig):
    """Online self-training: the RL loop and init of ReFT without critic, KL or reference; each step keeps
    the sampled responses with reward exactly 1, loss = w_s CE(kept) + w_gt CE(ground-truth batch)."""

    name: str = "online_st"
    sample_loss_weight: float = 0.5
    gt_loss_weight: float = 0.5


# ------------------------------------------------------------------------------------------- inference
@dataclass
class InferenceConfig:
    name: str = MISSING  # greedy | majority_vote | rerank
    max_new_tokens: int = 400  # upstream: prompt + response <= 700 at sampling time
    batch_size: int = 64


@dataclass
class VoteInferenceConfig(InferenceConfig):
    """Majority vote over K test samples from the method's best checkpoint."""

    checkpoint: str = "best"  # which checkpoint of the method's run is sampled
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # vote accuracy with K of the samples (mean of `curve_repeats` random subsets) for these K < num_samples,
    # recorded as `vote_accuracy_by_k` by majority_vote (ours, not upstream: how voting scales, from the same
    # samples; the rerank record, which reads the same samples, does not repeat it)
    curve_ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    curve_repeats: int = 20


@dataclass
class RerankerConfig:
    """The reward model: a 2-class sequence classifier from the generator's checkpoint, trained on the
    deduplicated warm-up samples of the train split labelled by correctness (upstream values)."""

    lr: float = 1e-6
    epochs: int = 3
    batch_size: int = 24
    max_length: int = 700
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    heldout_fraction: float = 0.1  # train questions held out to measure the classifier's accuracy
    eval_batch_size: int = 64
    train_sampling: SamplingConfig = field(default_factory=SamplingConfig)  # from the warm-up, train split


@dataclass
class RerankInferenceConfig(VoteInferenceConfig):
    reranker: RerankerConfig = field(default_factory=RerankerConfig)


# --------------------------------------------------------------------------------------------- runtime
@dataclass
class RewardConfig:
    correct: float = 1.0
    partial: float = 0.1
    no_answer: float = 0.0
    tolerance: float = 1e-2
    # Upstream code gives the 0.1 partial reward to multiple choice too (every MCQ output counts as
    # extracted); the paper's text says partial reward is for numeric datasets only ("paper").
    mcq_partial: str = "code"  # code | paper
    # "upstream": float() of the text after the trigger, as upstream. "lenient": also accept what real
    # models emit (thousands separators, $, trailing period, ...). See docs/answers.md.
    extraction: str = "upstream"  # upstream | lenient


@dataclass
class ExecutorConfig:
    """The sandboxed executor of P-CoT programs (reft_exp.execute)."""

    timeout_s: float = 10.0  # upstream: 10 s at evaluation/sampling (its RL rollouts use 2 s)
    memory_mb: int = 1024
    workers: int | None = None  # None = one per CPU core
    max_output_bytes: int = 65536


@dataclass
class PathsConfig:
    results_dir: str = MISSING
    runs_dir: str = MISSING
    cache_dir: str = MISSING
    output_dir: str | None = None  # the Hydra job folder (None outside a Hydra run)


@dataclass
class AccelerateConfig:
    name: str = MISSING
    cpu: bool = False
    mixed_precision: str = "no"  # no | bf16 | fp16
    # DeepSpeed ZeRO (reft_exp.distributed): 0 = off (plain DDP / one device), 2 or 3 = a DeepSpeedPlugin.
    zero_stage: int = 0
    offload_optimizer: bool = False  # ZeRO: optimizer state in CPU memory
    zero3_init: bool = True  # ZeRO-3: load models already partitioned (deepspeed.zero.Init)


@dataclass
class RolloutConfig:
    """How sequences are generated (greedy evaluation, sampling, RL rollouts): reft_exp.engines."""

    engine: str = "hf"  # hf | hf_static | vllm
    compile: bool = True  # hf_static: torch.compile the decode step (on CPU only when compile_cpu)
    compile_cpu: bool = False  # also compile on CPU (slow to build; off by default)
    compile_mode: str = "reduce-overhead"  # torch.compile mode (CUDA graphs)
    cache_pad_multiple: int = 64  # hf_static: static cache length rounded up to this (fewer recompiles)
    vllm_gpu_memory_utilization: float = 0.3  # vllm: fraction of GPU memory for its KV cache


@dataclass
class LoggerConfig:
    name: str = MISSING  # none | wandb
    project: str = "reft_exp"
    entity: str | None = None
    mode: str = "offline"  # online | offline | disabled
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class RootConfig:
    seed: int = 42
    deterministic: bool = False
    num_threads: int | None = None  # torch intra-op threads; None = torch default
    progress: bool = True  # tqdm bars
    overwrite: bool = False  # recompute a cell even if its results record exists
    tag: str = ""  # free text stored in the results record


SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"tiny": TinyModelConfig, "hub": HubModelConfig},
    "dataset": {"arith": ArithDatasetConfig, "upstream": UpstreamDatasetConfig},
    "cot": {"*": CotConfig},
    "sft": {"*": SFTConfig},
    "method": {"sft": MethodConfig, "reft": ReFTConfig, "offline_st": OfflineSTConfig,
               "online_st": OnlineSTConfig},
    "inference": {"greedy": InferenceConfig, "majority_vote": VoteInferenceConfig,
                  "rerank": RerankInferenceConfig},
    "reward": {"*": RewardConfig},
    "executor": {"*": ExecutorConfig},
    "paths": {"*": PathsConfig},
    "accelerate": {"*": AccelerateConfig},
    "logger": {"*": LoggerConfig},
    "rollout": {"*": RolloutConfig},
}
# the field of each node that picks its schema
SCHEMA_SELECTOR = {"model": "kind", "dataset": "kind", "method": "name", "inference": "name"}
ROOT_KEYS = set(RootConfig.__dataclass_fields__)
IGNORED_ROOT_KEYS = {"hydra", "experiment"}


@dataclass
class RunConfig:
    """The validated config of one grid cell, as typed objects."""

    model: ModelConfig
    dataset: DatasetConfig
    cot: CotConfig
    sft: SFTConfig
    method: Any
    inference: InferenceConfig
    reward: RewardConfig
    executor: ExecutorConfig
    paths: PathsConfig
    accelerate: AccelerateConfig
    logger: LoggerConfig
    rollout: RolloutConfig
    root: RootConfig
    raw: DictConfig  # the resolved composed config, for the results record

    @property
    def coordinates(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "dataset": self.dataset.name,
            "cot": self.cot.name,
            "method": self.method.name,
            "inference": self.inference.name,
            "seed": self.root.seed,
        }


def _source_file(full_key: str, choices: dict[str, str] | None) -> str:
    """Best guess of the YAML file that set ``full_key``: the first selected config file holding it."""
    parts = full_key.split(".")
    candidates: list[tuple[Path, list[str]]] = []
    for group, option in (choices or {}).items():
        if option is None or group.startswith("hydra"):
            continue
        path = CONF_DIR / group / f"{option}.yaml"
        if not path.exists():
            continue
        header = path.read_text().splitlines()[:3]
        is_global = any("@package _global_" in line for line in header)
        prefix = [] if is_global else group.split("/")[-1:]
        candidates.append((path, prefix))
    candidates.append((CONF_DIR / "config.yaml", []))
    for path, prefix in candidates:
        node: Any = OmegaConf.load(path)
        if len(parts) < len(prefix) or parts[: len(prefix)] != prefix:
            continue
        rest = parts[len(prefix) :]
        found = True
        for p in rest:
            if isinstance(node, DictConfig) and p in node:
                node = node[p]
            else:
                found = False
                break
        if found:
            return str(path.relative_to(CONF_DIR.parent))
    group = parts[0]
    if choices and group in choices:
        return f"conf/{group}/{choices[group]}.yaml or a command-line override"
    return "the command line or conf/config.yaml"


def _typed(group: str, node: Any, choices: dict[str, str] | None) -> Any:
    if not isinstance(node, DictConfig):
        raise ConfigError(f"config group '{group}' is missing or not a mapping (check conf/config.yaml defaults)")
    options = SCHEMAS[group]
    if "*" in options:
        schema = options["*"]
    else:
        selector = SCHEMA_SELECTOR[group]
        kind = node.get(selector)
        if kind not in options:
            where = _source_file(f"{group}.{selector}", choices)
            raise ConfigError(
                f"{group}.{selector}={kind!r} (in {where}) is not one of {sorted(options)}"
            )
        schema = options[kind]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            key = f"{group}.{missing[0]}"
            raise ConfigError(f"missing value for '{key}' (required by {schema.__name__}; set it in "
                              f"{_source_file(key, choices)})")
        return OmegaConf.to_object(merged)
    except ConfigKeyError as err:
        key = f"{group}.{err.key}" if err.key is not None else group
        raise ConfigError(
            f"unknown key '{key}' in {_source_file(key, choices)}; valid keys for {schema.__name__}: "
            f"{sorted(schema.__dataclass_fields__)}"
        ) from None
    except (ValidationError, MissingMandatoryValue) as err:
        key = f"{group}.{err.full_key}" if err.full_key else group
        msg = str(err).splitlines()[0]
        raise ConfigError(f"bad value for '{key}' in {_source_file(key, choices)}: {msg}") from None


def validate(cfg: DictConfig, choices: dict[str, str] | None = None) -> RunConfig:
    """Validate a composed config; ``choices`` maps group -> selected option (HydraConfig runtime.choices)."""
    unknown = set(cfg.keys()) - set(SCHEMAS) - ROOT_KEYS - IGNORED_ROOT_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"unknown top-level key '{key}' in {_source_file(key, choices)}")
    try:
        OmegaConf.resolve(cfg)
    except Exception as err:  # interpolation errors name the key themselves
        raise ConfigError(f"cannot resolve config: {str(err).splitlines()[0]}") from None
    typed = {g: _typed(g, cfg.get(g), choices) for g in SCHEMAS}
    root_node = OmegaConf.create({k: cfg[k] for k in ROOT_KEYS if k in cfg})
    root = _typed_root(root_node, choices)
    cot = typed["cot"].name
    if cot not in typed["dataset"].warmup_epoch:
        raise ConfigError(f"dataset.warmup_epoch has no entry for cot={cot!r}")
    return RunConfig(root=root, raw=cfg, **typed)


def _typed_root(node: DictConfig, choices: dict[str, str] | None) -> RootConfig:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RootConfig), node)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (ValidationError, ConfigKeyError) as err:
        key = err.full_key or "?"
        raise ConfigError(f"bad value for '{key}' in {_source_file(key, choices)}: {str(err).splitlines()[0]}") from None
