"""The paper's datasets: dataset configs, the upstream loader (local folder, cache, download, errors) and the
original-GSM8K converter, on the real files in shared/data (never copied into the repository)."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from reft_exp.answers import TRIGGER_SPLIT, AnswerSpec, extract_answers, parse_gold
from reft_exp.config import CONF_DIR, UpstreamDatasetConfig
from reft_exp.data.gsm8k_original import ConversionError, convert_gsm8k, split_solution
from reft_exp.data.upstream import DataError, load_upstream, upstream_filename

SHARED = Path(os.environ.get("REFT_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))
REFT_DATA = SHARED / "data" / "reft"
GSM8K_DATA = SHARED / "data" / "gsm8k"

DATASETS = {  # config name -> (file_stem, answer_type, warmup_epoch, test records)
    "gsm8k": ("gsm8k", "numeric", {"n": 2, "p": 2}, 1319),
    "svamp": ("svamp", "numeric", {"n": 2, "p": 2}, 1000),
    "mathqa": ("mathqa", "mcq", {"n": 5, "p": 2}, 1605),
    "mathqa_numeric": ("mathqa-numeric", "numeric", {"n": 10, "p": 2}, 1605),
}


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not available (set REFT_SHARED_DIR to the folder holding data/)")
    return path


def _config(name: str, cache_dir: Path, **overrides: object) -> UpstreamDatasetConfig:
    """conf/dataset/<name>.yaml resolved (paths.cache_dir = ``cache_dir``) and typed, with overrides."""
    root = OmegaConf.create({"paths": {"cache_dir": str(cache_dir)},
                             "dataset": OmegaConf.load(CONF_DIR / "dataset" / f"{name}.yaml")})
    node = OmegaConf.to_container(root, resolve=True)["dataset"]  # type: ignore[index]
    merged = OmegaConf.merge(OmegaConf.structured(UpstreamDatasetConfig), node)
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, UpstreamDatasetConfig)
    return dataclasses.replace(cfg, **overrides)


# --------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_config_is_complete_and_valid(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REFT_DATA_DIR", raising=False)
    monkeypatch.delenv("GSM8K_DATA_DIR", raising=False)
    raw = OmegaConf.load(CONF_DIR / "dataset" / f"{name}.yaml")
    assert set(raw.keys()) == {f.name for f in dataclasses.fields(UpstreamDatasetConfig)}  # every field
    cfg = _config(name, tmp_path)
    stem, answer_type, warmup, _ = DATASETS[name]
    assert (cfg.name, cfg.kind, cfg.file_stem, cfg.answer_type) == (name, "upstream", stem, answer_type)
    assert cfg.warmup_epoch == warmup
    assert cfg.data_dir is None and cfg.source == "upstream"
    assert cfg.base_url == "https://raw.githubusercontent.com/lqtrung1998/mwp_ReFT/main/data"
    assert cfg.cache_dir == f"{tmp_path}/data"
    assert cfg.train_limit is None and cfg.test_limit is None
    monkeypatch.setenv("REFT_DATA_DIR", "/somewhere")
    assert _config(name, tmp_path).data_dir == "/somewhere"


def test_upstream_filenames() -> None:
    assert upstream_filename("mathqa-numeric", "n", "train") == "mathqa-numeric_nl.json"
    assert upstream_filename("gsm8k", "p", "train") == "gsm8k_python_sdp.json"
    assert upstream_filename("svamp", "p", "test") == upstream_filename("svamp", "n", "test") == "svamp_test_set.json"
    with pytest.raises(ValueError, match="split"):
        upstream_filename("svamp", "n", "validation")


# ------------------------------------------------------------------------------------ real local files
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_test_set_loads_from_data_dir(name: str, tmp_path: Path) -> None:
    data_dir = _need(REFT_DATA)
    cfg = _config(name, tmp_path, data_dir=str(data_dir), base_url=None)
    records = load_upstream(cfg, "n", "test")
    assert records == load_upstream(cfg, "p", "test")
    assert len(records) == DATASETS[name][3]
    assert all(set(r) == {"item_id", "question", "answer_value"} for r in records)
    assert all(r["item_id"].startswith(f"{cfg.file_stem}_") for r in records)
    if cfg.answer_type == "mcq":
        assert {r["answer_value"] for r in records} == {"a", "b", "c", "d", "e"}
    else:
        assert all(isinstance(float(r["answer_value"].replace(",", "")), float) for r in records)
    assert not (tmp_path / "data").exists()  # nothing cached or downloaded
    assert len(load_upstream(dataclasses.replace(cfg, test_limit=7), "n", "test")) == 7


def test_svamp_training_files_and_limits(tmp_path: Path) -> None:
    cfg = _config("svamp", tmp_path, data_dir=str(_need(REFT_DATA)), base_url=None)
    nl, sdp = load_upstream(cfg, "n", "train"), load_upstream(cfg, "p", "train")
    assert (len(nl), len(sdp)) == (3076, 3043)
    assert all(r["answer_cot"].startswith("def solution():") for r in sdp)
    limited = load_upstream(dataclasses.replace(cfg, train_limit=5), "n", "train")
    assert limited == nl[:5]


def test_missing_file_without_download_says_where_to_put_it(tmp_path: Path) -> None:
    cfg = _config("gsm8k", tmp_path, data_dir=str(_need(REFT_DATA)), base_url=None)
    with pytest.raises(DataError) as err:
        load_upstream(cfg, "n", "train")  # gsm8k_nl.json is not in shared/data/reft
    msg = str(err.value)
    assert "gsm8k_nl.json" in msg and str(REFT_DATA) in msg and "REFT_DATA_DIR" in msg and "\n" not in msg


# ------------------------------------------------------------------------------------------ original GSM8K
def _gsm8k_original() -> list[dict]:
    path = _need(GSM8K_DATA / "train.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_all_original_gsm8k_answers_convert_and_extract() -> None:
    originals = _gsm8k_original()
    converted = convert_gsm8k(originals)
    assert len(converted) == 7473
    finals = [o["answer"].splitlines()[-1].removeprefix("#### ").strip() for o in originals]
    assert sum("," in f for f in finals) == 79
    assert sum(f.startswith("-") for f in finals) == 3
    assert [c["item_id"] for c in converted[:3]] == ["gsm8k_0", "gsm8k_1", "gsm8k_2"]
    assert all("<<" not in c["answer_cot"] and "####" not in c["answer_cot"] for c in converted)
    assert converted[0]["answer_cot"] == ("Natalia sold 48/2 = 24 clips in May.\n"
                                          "Natalia sold 48+24 = 72 clips altogether in April and May.")
    spec = AnswerSpec()  # upstream extraction: plain float()
    targets = [c["answer_cot"] + TRIGGER_SPLIT + c["answer_value"] for c in converted]
    preds = extract_answers(targets, spec)
    assert preds == [float(f.replace(",", "")) for f in finals]
    assert preds == [parse_gold(c["answer_value"], spec) for c in converted]


def test_split_solution_edge_cases() -> None:
    assert split_solution("He pays 2*1,000 = <<2*1000=2000>>2,000.\n#### 2,000") == ("He pays 2*1,000 = 2,000.",
                                                                                 "2000")
    assert split_solution("It drops 3 - 5 = <<3-5=-2>>-2\n#### -2") == ("It drops 3 - 5 = -2", "-2")
    for bad in ("no final line", "x\n#### seven", "x\n#### 1\n#### 2", "a <<1+1=2\n#### 2"):
        with pytest.raises(ConversionError):
            split_solution(bad)
    with pytest.raises(ConversionError, match="record 1"):
        convert_gsm8k([{"question": "q", "answer": "a\n#### 1"}, {"question": "q", "answer": "a"}])


def test_source_gsm8k_original(tmp_path: Path) -> None:
    _need(GSM8K_DATA / "train.jsonl")
    cfg = _config("gsm8k", tmp_path, data_dir=str(_need(REFT_DATA)), base_url=None, source="gsm8k_original",
                  gsm8k_original_dir=str(GSM8K_DATA), gsm8k_original_url=None)
    train = load_upstream(cfg, "n", "train")
    assert len(train) == 7473 and train[0]["item_id"] == "gsm8k_0" and train[0]["answer_value"] == "72"
    assert len(load_upstream(cfg, "n", "test")) == 1319  # the test set stays upstream
    assert len(load_upstream(dataclasses.replace(cfg, train_limit=3), "n", "train")) == 3
    with pytest.raises(DataError, match="gsm8k_python_sdp.json"):  # P-CoT stays upstream
        load_upstream(cfg, "p", "train")
    with pytest.raises(DataError, match="train.jsonl.*gsm8k_original_dir"):
        load_upstream(dataclasses.replace(cfg, gsm8k_original_dir=str(tmp_path)), "n", "train")
    with pytest.raises(DataError, match="only applies to GSM8K"):
        load_upstream(_config("svamp", tmp_path, source="gsm8k_original"), "n", "train")


# ------------------------------------------------------------------------------------------------ download
@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path, list[str]]]:
    """A local HTTP server on 127.0.0.1 serving a temp folder: (base URL, folder, requested paths)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep the test output quiet
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/data", root, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _small_records(n: int = 5) -> list[dict]:
    return [{"item_id": f"svamp_{i}", "question": f"q{i}?", "answer_cot": f"c{i}", "answer_value": str(i)}
            for i in range(n)]


def test_download_then_cache(server: tuple[str, Path, list[str]], tmp_path: Path) -> None:
    base_url, root, requests = server
    (root / "data").mkdir()
    shutil.copy(_need(REFT_DATA / "svamp_test_set.json"), root / "data" / "svamp_test_set.json")
    (root / "data" / "svamp_nl.json").write_text(json.dumps(_small_records()))
    cache = tmp_path / "cache"
    cfg = _config("svamp", cache, base_url=base_url, data_dir=None, download_timeout_s=5)

    test = load_upstream(cfg, "n", "test")
    assert len(test) == 1000
    assert (cache / "data" / "svamp_test_set.json").read_bytes() == (REFT_DATA / "svamp_test_set.json").read_bytes()
    assert load_upstream(cfg, "n", "train") == _small_records()
    assert requests == ["/data/svamp_test_set.json", "/data/svamp_nl.json"]
    assert not list((cache / "data").glob("*.part"))  # no temp files left

    # second call: served from the cache, even after the server lost the files
    shutil.rmtree(root / "data")
    assert load_upstream(cfg, "n", "test") == test
    assert len(requests) == 2

    # data_dir wins over the cache
    local = tmp_path / "local"
    local.mkdir()
    (local / "svamp_test_set.json").write_text(json.dumps(_small_records(2)))
    assert len(load_upstream(dataclasses.replace(cfg, data_dir=str(local)), "n", "test")) == 2


def test_download_errors_are_clear(server: tuple[str, Path, list[str]], tmp_path: Path) -> None:
    base_url, root, _ = server
    cfg = _config("svamp", tmp_path / "cache", base_url=base_url, data_dir=str(tmp_path / "nowhere"),
                  download_timeout_s=5)
    with pytest.raises(DataError) as err:
        load_upstream(cfg, "p", "train")
    msg = str(err.value)
    assert f"{base_url}/svamp_python_sdp.json" in msg and "404" in msg and "no such folder" in msg
    assert "REFT_DATA_DIR" in msg and "\n" not in msg

    # a served file that is not a valid data file (e.g. an HTML error page) is reported and not cached
    (root / "data").mkdir()
    (root / "data" / "svamp_test_set.json").write_text("<html>rate limited</html>")
    with pytest.raises(DataError, match="not a valid data file"):
        load_upstream(cfg, "n", "test")
    assert not (tmp_path / "cache" / "data" / "svamp_test_set.json").exists()


def test_gsm8k_original_download(server: tuple[str, Path, list[str]], tmp_path: Path) -> None:
    base_url, root, requests = server
    (root / "data").mkdir()
    lines = [{"question": "Q1?", "answer": "2 * 3 = <<2*3=6>>6\n#### 6"},
             {"question": "Q2?", "answer": "It is 1,000 + 200 = <<1000+200=1200>>1,200\n#### 1,200"}]
    (root / "data" / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg = _config("gsm8k", tmp_path / "cache", data_dir=None, gsm8k_original_dir=None, base_url=None,
                  source="gsm8k_original", gsm8k_original_url=base_url, download_timeout_s=5)
    want = [{"item_id": "gsm8k_0", "question": "Q1?", "answer_cot": "2 * 3 = 6", "answer_value": "6"},
            {"item_id": "gsm8k_1", "question": "Q2?", "answer_cot": "It is 1,000 + 200 = 1,200",
             "answer_value": "1200"}]
    assert load_upstream(cfg, "n", "train") == want
    assert (tmp_path / "cache" / "data" / "grade-school-math" / "train.jsonl").is_file()
    assert load_upstream(cfg, "n", "train") == want  # from the cache
    assert requests == ["/data/train.jsonl"]


def test_unreachable_server(tmp_path: Path) -> None:
    cfg = _config("svamp", tmp_path, base_url="http://127.0.0.1:9/data", data_dir=None, download_timeout_s=2)
    with pytest.raises(DataError, match=r"download from http://127\.0\.0\.1:9/data/svamp_test_set\.json failed"):
        load_upstream(cfg, "n", "test")


# --------------------------------------------------------------------------------------------- bad files
def _write(folder: Path, name: str, text: str) -> UpstreamDatasetConfig:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return _config("svamp", folder / "cache", data_dir=str(folder), base_url=None)


def test_malformed_json_names_file_and_record(tmp_path: Path) -> None:
    good = json.dumps(_small_records(3))[:-1]  # drop the closing bracket
    cfg = _write(tmp_path / "d", "svamp_nl.json", good + ', {"item_id": "svamp_3", "question": }]')
    with pytest.raises(DataError) as err:
        load_upstream(cfg, "n", "train")
    msg = str(err.value)
    assert str(tmp_path / "d" / "svamp_nl.json") in msg and "record 3" in msg and "line 1" in msg


def test_record_without_answer_value_names_file_and_record(tmp_path: Path) -> None:
    records = _small_records(4)
    del records[2]["answer_value"]
    cfg = _write(tmp_path / "d", "svamp_nl.json", json.dumps(records, indent=1))
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "d" / "svamp_nl.json")) +
                       r": record 2 \(svamp_2\) has no 'answer_value' field"):
        load_upstream(cfg, "n", "train")


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r[1].pop("answer_cot"), r"record 1 \(svamp_1\) has no 'answer_cot'"),
    (lambda r: r[0].update(answer_value=7), r"record 0 \(svamp_0\): 'answer_value' must be a string"),
    (lambda r: r[3].update(answer_value="seven"), r"record 3 \(svamp_3\): answer_value 'seven' is not a number"),
    (lambda r: r.__setitem__(2, ["not", "a", "record"]), r"record 2 is a JSON list"),
])
def test_bad_records(tmp_path: Path, mutate, message: str) -> None:
    records = _small_records(4)
    mutate(records)
    cfg = _write(tmp_path / "d", "svamp_nl.json", json.dumps(records))
    with pytest.raises(DataError, match=message):
        load_upstream(cfg, "n", "train")


def test_not_a_list_and_mcq_answers(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "d", "svamp_test_set.json", json.dumps({"records": []}))
    with pytest.raises(DataError, match="expected a JSON list"):
        load_upstream(cfg, "n", "test")
    mcq = [{"item_id": "mathqa_0", "question": "q", "answer_value": "f"}]
    (tmp_path / "d" / "mathqa_test_set.json").write_text(json.dumps(mcq))
    cfg = _config("mathqa", tmp_path / "cache", data_dir=str(tmp_path / "d"), base_url=None)
    with pytest.raises(DataError, match=r"answer_value 'f' is not a letter a-e"):
        load_upstream(cfg, "n", "test")


def test_records_go_through_datasets(tmp_path: Path) -> None:
    """Like upstream (``Dataset.from_list``), extra fields must have one type across records."""
    records = _small_records(3)
    records[0]["source"], records[2]["source"] = 1, {"nested": True}
    cfg = _write(tmp_path / "d", "svamp_nl.json", json.dumps(records))
    with pytest.raises(DataError, match=r"svamp_nl\.json: records do not share one schema"):
        load_upstream(cfg, "n", "train")


def test_fields_are_stripped_as_the_official_scripts_read_them(tmp_path: Path) -> None:
    """train_sft_model.py:98-103 (and the RL / self-training scripts) strip question, answer_value and answer_cot
    before formatting: a record padded with whitespace gives the prompt and target of the clean record. The real
    SVAMP files have no such padding: they load unchanged."""
    from reft_exp.prompts import build_prompt, build_target

    clean = _small_records(3)
    padded = [r | {"question": f"  {r['question']}\n", "answer_cot": f"\n{r['answer_cot']}  \n",
                   "answer_value": f" {r['answer_value']} "} for r in clean]
    (tmp_path / "svamp_nl.json").write_text(json.dumps(padded))
    cfg = _config("svamp", tmp_path / "cache", data_dir=str(tmp_path))
    loaded = load_upstream(cfg, "n", "train")
    assert loaded == clean
    assert build_prompt(loaded[0]["question"], "n") == "Question:\nq0?\nAnswer reasoning:\n"
    assert build_target(loaded[1], "n") == f"c1{TRIGGER_SPLIT}1"
    real = _config("svamp", tmp_path / "cache", data_dir=str(_need(REFT_DATA / "svamp_nl.json").parent))
    for cot, split, name in (("n", "train", "svamp_nl.json"), ("p", "train", "svamp_python_sdp.json"),
                             ("n", "test", "svamp_test_set.json")):
        assert load_upstream(real, cot, split) == json.loads((REFT_DATA / name).read_text())
