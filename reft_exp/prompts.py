"""Prompt and target formats, exactly as the official code (train_sft_model.py:45-47, 104-107; see
``reft_spec.md``, "Data and formats")."""

from __future__ import annotations

from reft_exp.answers import TRIGGER_SPLIT

PROMPT_TEMPLATE = "Question:\n{question}\nAnswer reasoning:\n"


def program_header(question: str) -> str:
    """The P-CoT program header with the question as docstring (the official ``*_python_sdp.json`` style, as
    train_rl_reft.py:153 writes it)."""
    return f'def solution():\n    """{question}"""\n'


def build_prompt(question: str, cot: str, with_header: bool = False) -> str:
    """The prompt. For P-CoT at RL and sampling time (``with_header``) the program header is part of it;
    at SFT time the model writes the header and docstring itself."""
    prompt = PROMPT_TEMPLATE.format(question=question)
    if cot == "p" and with_header:
        prompt += program_header(question)
    return prompt


# Where an RL / sampling prompt that holds the P-CoT header ends, for the whole process (set per cell from
# ``cot.header_prompt_end`` by the app, like the generation engine): "newline" = after the header's last
# newline, as the official code (train_rl_reft.py:153); "quotes" = at the docstring's closing quotes, the model
# writes the newline; "auto" = "quotes" for a tokenizer that merges that newline with the next line's
# indentation (byte-level BPEs: SmolLM2, Galactica), whose SFT data never shows a lone newline token there, else
# "newline" (SentencePiece: CodeLlama). The answer text is the same either way (docs/text_path.md).
HEADER_PROMPT_ENDS = ("newline", "quotes", "auto")
_header_prompt_end = ["newline"]


def set_header_prompt_end(mode: str) -> None:
    if mode not in HEADER_PROMPT_ENDS:
        raise ValueError(f"cot.header_prompt_end={mode!r}: expected one of {HEADER_PROMPT_ENDS}")
    _header_prompt_end[0] = mode


def merges_header_newline(tokenizer) -> bool:
    """Does ``tokenizer`` merge the header's last newline with the indentation that follows it?"""
    end = tokenizer('"""\n', add_special_tokens=False)["input_ids"]
    full = tokenizer('"""\n    x = 1', add_special_tokens=False)["input_ids"]
    return list(full[: len(end)]) != list(end)


def prompt_for_tokenizer(tokenizer, prompt: str) -> str:
    """The text a prompt is tokenized from: without the header's last newline where the prompt ends there and
    the process's ``header_prompt_end`` (or, under "auto", ``tokenizer``) asks for it."""
    mode = _header_prompt_end[0]
    if not prompt.endswith('"""\n') or mode == "newline" or (mode == "auto" and not merges_header_newline(tokenizer)):
        return prompt
    return prompt[:-1]


def build_target(record: dict, cot: str) -> str:
    """The SFT target (EOS is appended by the tokenization step). A record carrying ``target`` (a sampled
    chain of thought kept by offline self-training) is trained on that text as is."""
    if "target" in record:
        return record["target"]
    if cot == "n":
        return f"{record['answer_cot']}{TRIGGER_SPLIT}{record['answer_value']}"
    if cot == "p":
        return record["answer_cot"]
    raise ValueError(f"unknown cot style {cot!r} (expected 'n' or 'p')")
