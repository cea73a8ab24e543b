"""Models and tokenizers: one loading path for the tiny embedded model and for hub models.

The tiny model is *built* once into a folder (random init from the config, BPE tokenizer trained on the
task text) and then loaded exactly like a hub model, via ``AutoTokenizer`` / ``AutoModelForCausalLM
.from_pretrained(folder)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from reft_exp.config import HubModelConfig, ModelConfig, TinyModelConfig

log = logging.getLogger(__name__)

# Special tokens of the tiny tokenizer, laid out so ids match the upstream convention (pad 1, eos 2).
TINY_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def train_tiny_tokenizer(texts: Iterable[str], cfg: TinyModelConfig) -> PreTrainedTokenizerBase:
    """A byte-level BPE whose pre-tokenizer splits every digit and every newline into its own token.

    Short sequences make the tiny model fast on a CPU; single-digit tokens make arithmetic learnable.
    Byte-level BPE round-trips text exactly, so answers and programs decode unchanged.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # A newline is always a token of its own (as in the Llama/Galactica vocabularies): otherwise BPE merges
        # it with the next line's indentation, and a prompt ending with the P-CoT header's newline (RL and
        # sampling prompts) would end mid-token, a boundary the model never saw in training.
        pre_tokenizers.Split(pattern="\n", behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.tokenizer_min_frequency,
        special_tokens=TINY_SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
    )
    assert fast.pad_token_id == cfg.pad_token_id and fast.eos_token_id == cfg.eos_token_id
    return fast


def build_tiny_model(folder: Path, texts: Iterable[str], cfg: TinyModelConfig) -> None:
    """Train the tokenizer, build a randomly initialised Llama and save both to ``folder``."""
    tokenizer = train_tiny_tokenizer(texts, cfg)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta, tie_word_embeddings=True, pad_token_id=cfg.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=cfg.eos_token_id,
    )
    torch.manual_seed(cfg.init_seed)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built tiny Llama: %.2fM parameters, vocab %d", n_params / 1e6, len(tokenizer))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def check_model_path(path: str) -> None:
    """A local-looking path must exist; anything else of the form ``org/name`` is taken as a hub id."""
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") != 1
    if looks_local and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"model path '{path}' does not exist (give a local folder or an 'org/name' hub id)")


def load_tokenizer(path: str | Path, cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """Load a tokenizer and force the upstream pad/eos ids."""
    kwargs = {}
    if isinstance(cfg, HubModelConfig):
        kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
    if tok.pad_token_id != cfg.pad_token_id:
        tok.pad_token_id = cfg.pad_token_id  # upstream: tokenizer.pad_token_id = 1
    if tok.eos_token_id != cfg.eos_token_id:
        tok.eos_token_id = cfg.eos_token_id  # upstream: tokenizer.eos_token_id = 2
    return tok


def load_causal_lm(path: str | Path, cfg: ModelConfig) -> torch.nn.Module:
    """Load a causal LM (hub id or local folder) in the configured dtype, dropout off as upstream RL."""
    kwargs = {"dtype": DTYPES[cfg.dtype]}
    if isinstance(cfg, HubModelConfig):
        kwargs.update(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    path = str(path)
    check_model_path(path)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.config.pad_token_id = cfg.pad_token_id
    model.config.eos_token_id = cfg.eos_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = cfg.pad_token_id
        model.generation_config.eos_token_id = cfg.eos_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model
