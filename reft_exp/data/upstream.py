"""The paper's datasets in the official ReFT file layout (lqtrung1998/mwp_ReFT ``data/``, as
exps/paper_exps/ReFT/gsm8k.sh:5-6 names them).

Files: ``<stem>_nl.json`` (N-CoT train), ``<stem>_python_sdp.json`` (P-CoT train), ``<stem>_test_set.json``
(test, both CoT styles); each a JSON list of records ``item_id``, ``question``, ``answer_value`` (strings)
and, in training files, ``answer_cot``. A file is looked up in ``dataset.data_dir`` (default
``$REFT_DATA_DIR``), then in ``dataset.cache_dir``, then downloaded from ``dataset.base_url`` into the cache
(atomic write; the download is parsed and checked before it is kept). See docs/datasets.md.

``dataset.source=gsm8k_original`` builds the GSM8K N-CoT training records from the original GSM8K
``train.jsonl`` instead (:mod:`reft_exp.data.gsm8k_original`); P-CoT training and the test set still come
from the upstream files.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from reft_exp.config import UpstreamDatasetConfig
from reft_exp.data.gsm8k_original import ConversionError, convert_gsm8k

log = logging.getLogger(__name__)

SOURCES = ("upstream", "gsm8k_original")
TEST_FIELDS = ("item_id", "question", "answer_value")
TRAIN_FIELDS = ("item_id", "question", "answer_cot", "answer_value")
MCQ_LETTERS = ("a", "b", "c", "d", "e")
GSM8K_ORIGINAL_FILE = "train.jsonl"
GSM8K_ORIGINAL_CACHE = "grade-school-math"  # subfolder of the cache for the original release


class DataError(ValueError):
    """A data file that cannot be found, downloaded or read; the message is one line naming the file."""


# The official SFT, RL and self-training scripts strip these fields as they read a record, test sets included
# (train_sft_model.py:98-103, train_rl_reft.py:138-143, train_rl_sl.py:106-111, train_sl_model.py:319-324);
# sampling.py:74-77 prompts with the question as read. The files here have no surrounding whitespace.
STRIPPED_FIELDS = ("question", "answer_value", "answer_cot")


def strip_fields(records: list[dict]) -> list[dict]:
    """``records`` with the string values of :data:`STRIPPED_FIELDS` stripped, as the official scripts read them."""
    return [r | {k: r[k].strip() for k in STRIPPED_FIELDS if isinstance(r.get(k), str)} for r in records]


def upstream_filename(stem: str, cot: str, split: str) -> str:
    """``<stem>_nl.json`` / ``<stem>_python_sdp.json`` for training, ``<stem>_test_set.json`` for test."""
    if split == "test":
        return f"{stem}_test_set.json"
    if split != "train":
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if cot not in ("n", "p"):
        raise ValueError(f"cot must be 'n' or 'p', not {cot!r}")
    return f"{stem}_nl.json" if cot == "n" else f"{stem}_python_sdp.json"


def load_upstream(cfg: UpstreamDatasetConfig, cot: str, split: str) -> list[dict]:
    """The records of one split (``train`` for the given CoT style, or ``test``), validated, limit applied."""
    name = upstream_filename(cfg.file_stem, cot, split)  # validates split and cot
    if cfg.source not in SOURCES:
        raise DataError(f"dataset.source={cfg.source!r} is not one of {list(SOURCES)}")
    if cfg.source == "gsm8k_original" and cfg.file_stem != "gsm8k":
        raise DataError(f"dataset.source=gsm8k_original only applies to GSM8K (file_stem is {cfg.file_stem!r})")
    required = TRAIN_FIELDS if split == "train" else TEST_FIELDS

    if cfg.source == "gsm8k_original" and split == "train" and cot == "n":
        path = locate_file(
            GSM8K_ORIGINAL_FILE,
            search_dirs=[("gsm8k_original_dir", cfg.gsm8k_original_dir), ("data_dir", cfg.data_dir)],
            cache_dir=Path(cfg.cache_dir) / GSM8K_ORIGINAL_CACHE,
            base_url=cfg.gsm8k_original_url,
            timeout_s=cfg.download_timeout_s,
            parse=parse_jsonl,
            hint="set dataset.gsm8k_original_dir (or GSM8K_DATA_DIR) to the folder of openai/grade-school-math's "
                 "train.jsonl",
        )
        try:
            records = convert_gsm8k(parse_jsonl(_read_text(path), str(path)), origin=str(path))
        except ConversionError as err:
            raise DataError(str(err)) from None
        origin = f"{path} (converted)"
    else:
        path = locate_file(
            name,
            search_dirs=[("data_dir", cfg.data_dir)],
            cache_dir=Path(cfg.cache_dir),
            base_url=cfg.base_url,
            timeout_s=cfg.download_timeout_s,
            parse=parse_json_list,
            hint="put the upstream file in a folder and set dataset.data_dir (or REFT_DATA_DIR) to it",
        )
        records = parse_json_list(_read_text(path), str(path))
        origin = str(path)

    validate_records(records, origin, required, cfg.answer_type)
    records = strip_fields(_through_datasets(records, origin))
    limit = cfg.train_limit if split == "train" else cfg.test_limit
    return records[:limit] if limit is not None else records


# ----------------------------------------------------------------------------------------- locating
def locate_file(name: str, search_dirs: list[tuple[str, str | None]], cache_dir: Path, base_url: str | None,
                timeout_s: float, parse: Callable[[str, str], list], hint: str) -> Path:
    """The first of ``<dir>/<name>`` for the ``(label, folder)`` search folders that are set,
    ``<cache_dir>/<name>``, or a download of ``<base_url>/<name>`` into the cache. Fails with one line saying
    where it looked and what to do."""
    looked = []
    for label, folder in search_dirs:
        if folder is None:
            looked.append(f"{label} (unset)")
            continue
        candidate = Path(folder).expanduser() / name
        if candidate.is_file():
            return candidate
        missing = "" if candidate.parent.is_dir() else ", no such folder"
        looked.append(f"{candidate.parent} ({label}{missing})")
    cached = cache_dir / name
    if cached.is_file():
        return cached
    looked.append(f"{cache_dir} (cache)")
    where = ", ".join(looked)
    if base_url is None:
        raise DataError(f"{name} not found in {where} and downloading is off (no base URL); {hint}")
    url = base_url.rstrip("/") + "/" + name
    try:
        download(url, cached, timeout_s, parse)
    except DataError as err:
        raise DataError(f"{name} not found in {where}, and {err}; {hint}") from None
    return cached


def download(url: str, dest: Path, timeout_s: float, parse: Callable[[str, str], list]) -> None:
    """Fetch ``url`` and write it to ``dest`` atomically (temp file + rename) once ``parse`` accepts it."""
    log.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            data = response.read()
    except urllib.error.HTTPError as err:
        raise DataError(f"download from {url} failed: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise DataError(f"download from {url} failed: {reason}") from None
    try:
        parse(data.decode("utf-8"), url)
    except (DataError, UnicodeDecodeError) as err:
        raise DataError(f"download from {url} is not a valid data file ({err})") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------ parsing
def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None


def _failing_record(text: str) -> int:
    """Index of the first list element that does not parse (for the error message of a malformed file)."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1 if "[" in text else 0
    index = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return index
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text) or text[pos] != ",":
            return index + 1 if pos < len(text) and text[pos] != "]" else index
        pos += 1
        index += 1


def parse_json_list(text: str, origin: str) -> list:
    """A JSON list (the official file format, train_rl_reft.py:115-116); malformed JSON names the line, column
    and record index."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{origin}: malformed JSON in record {_failing_record(text)} "
                        f"(line {err.lineno}, column {err.colno}): {err.msg}") from None
    if not isinstance(data, list):
        raise DataError(f"{origin}: expected a JSON list of records, got a JSON {type(data).__name__}")
    return data


def parse_jsonl(text: str, origin: str) -> list:
    """One JSON object a line (the original GSM8K format); blank lines are skipped."""
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{origin}: malformed JSON in record {len(records)} (line {lineno}, "
                            f"column {err.colno}): {err.msg}") from None
    return records


def validate_records(records: list, origin: str, required: tuple[str, ...], answer_type: str) -> None:
    """Each record is an object with string fields ``required``; the gold answer is a number (thousands
    separators allowed) or, for multiple choice, a letter a-e. Fails naming ``origin`` and the record index."""
    if not records:
        raise DataError(f"{origin}: no records")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{origin}: record {index} is a JSON {type(record).__name__}, expected an object")
        for key in required:
            if key not in record:
                raise DataError(f"{origin}: record {index} ({record.get('item_id', '?')}) has no '{key}' field")
            if not isinstance(record[key], str):
                raise DataError(f"{origin}: record {index} ({record.get('item_id', '?')}): '{key}' must be a "
                                f"string, got {type(record[key]).__name__}")
        value = record["answer_value"].strip()
        if answer_type == "mcq":
            ok = value.lower().replace('"', "").replace("'", "") in MCQ_LETTERS
        else:
            try:
                float(value.replace(",", ""))
                ok = True
            except ValueError:
                ok = False
        if not ok:
            raise DataError(f"{origin}: record {index} ({record['item_id']}): answer_value {value!r} is not "
                            f"{'a letter a-e' if answer_type == 'mcq' else 'a number'} (answer_type={answer_type})")


def _through_datasets(records: list[dict], origin: str) -> list[dict]:
    """Pass the records through ``datasets.Dataset`` (one consistent Arrow schema, as the official code loads
    them, train_rl_reft.py:115-116)."""
    import datasets

    try:
        return datasets.Dataset.from_list(records).to_list()
    except Exception as err:  # Arrow type/schema errors
        raise DataError(f"{origin}: records do not share one schema: {str(err).splitlines()[0]}") from None
