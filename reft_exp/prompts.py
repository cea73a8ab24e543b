"""Prompt and target formats, exactly as upstream (see ``reft_spec.md``, "Data and formats")."""

from __future__ import annotations

from reft_exp.answers import TRIGGER_SPLIT

PROMPT_TEMPLATE = "Question:\n{question}\nAnswer reasoning:\n"


def program_header(question: str) -> str:
    """The P-CoT program header with the question as docstring (upstream ``*_python_sdp.json`` style)."""
    return f'def solution():\n    """{question}"""\n'


def build_prompt(question: str, cot: str, with_header: bool = False) -> str:
    """The prompt. For P-CoT at RL and sampling time (``with_header``) the program header is part of it;
    at SFT time the model writes the header and docstring itself."""
    prompt = PROMPT_TEMPLATE.format(question=question)
    if cot == "p" and with_header:
        prompt += program_header(question)
    return prompt


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
