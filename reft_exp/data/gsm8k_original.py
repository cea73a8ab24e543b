"""Convert the original GSM8K release (openai/grade-school-math, MIT) into official-schema N-CoT records
(train_sft_model.py:92-96).

The ReFT authors' GSM8K N-CoT annotations (``gsm8k_nl.json``) were generated with GPT-3.5 and are a large
download; the original human-written solutions are a drop-in alternative (``dataset.source=gsm8k_original``).
An original record is ``{"question": ..., "answer": ...}`` where the answer is the worked solution, with
calculator annotations such as ``<<48/2=24>>``, and a last line ``#### 72``. The converted record is

- ``item_id``: ``gsm8k_<index>`` (0-based line index in ``train.jsonl``; official ids have the same form,
  data/gsm8k_test_set.json:3);
- ``question``: unchanged;
- ``answer_cot``: the solution lines without the annotations (``48/2 = <<48/2=24>>24`` -> ``48/2 = 24``)
  and without the ``####`` line, stripped;
- ``answer_value``: the ``####`` value with thousands separators removed (``1,600`` -> ``1600``), so the
  N-CoT target ``answer_cot + "\\nTherefore, the answer is: " + answer_value`` extracts to the gold value
  under the official plain ``float()`` extraction (train_rl_reft.py:66, src/utils.py:39-43).

The annotations are removed because a model trained on them would learn a calculator syntax that nothing
executes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

CALC_ANNOTATION = re.compile(r"<<[^<>]*>>")
FINAL_MARK = "####"


class ConversionError(ValueError):
    """An original GSM8K record that does not have the expected form."""


def split_solution(answer: str) -> tuple[str, str]:
    """``(answer_cot, answer_value)`` from an original GSM8K answer (see the module docstring)."""
    body, sep, final = answer.rpartition("\n" + FINAL_MARK)
    if not sep or FINAL_MARK in body or "\n" in final.strip():
        raise ConversionError("the answer does not end with exactly one '#### <value>' line")
    value = final.strip().replace(",", "")
    try:
        float(value)
    except ValueError:
        raise ConversionError(f"the '####' value {final.strip()!r} is not a number") from None
    cot = CALC_ANNOTATION.sub("", body).strip()
    if "<<" in cot or ">>" in cot:
        raise ConversionError("an unbalanced '<<...>>' calculator annotation")
    return cot, value


def convert_record(record: dict, index: int) -> dict:
    """One original record (``question``, ``answer``) -> one upstream-schema N-CoT record."""
    if not isinstance(record.get("question"), str) or not isinstance(record.get("answer"), str):
        raise ConversionError("expected string fields 'question' and 'answer'")
    cot, value = split_solution(record["answer"])
    return {"item_id": f"gsm8k_{index}", "question": record["question"], "answer_cot": cot, "answer_value": value}


def convert_gsm8k(records: Iterable[dict], origin: str = "GSM8K train.jsonl") -> list[dict]:
    """Convert all records; a bad one fails with ``origin`` and its record index."""
    out = []
    for index, record in enumerate(records):
        try:
            out.append(convert_record(record, index))
        except ConversionError as err:
            raise ConversionError(f"{origin}: record {index}: {err}") from None
    return out
