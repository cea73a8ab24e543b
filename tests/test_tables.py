"""Paper tables from results records: layout, averages, deltas against the paper, seeds, missing cells, CLI."""

from __future__ import annotations

import json
import re

import pytest

from reft_exp import tables
from reft_exp.results import write_record
from reft_exp.tables import MISSING


def _record(model, dataset, cot, method, accuracy, inference="greedy", seed=42, version=1, tag=""):
    cid = f"{model}__{dataset}__{cot}__{method}__{inference}__seed{seed}" + (f"__{tag}" if tag else "")
    return {
        "record_version": version, "cell_id": cid, "config_hash": "0" * 12, "status": "complete",
        "coordinates": {"model": model, "dataset": dataset, "cot": cot, "method": method,
                        "inference": inference, "seed": seed},
        "accuracy": accuracy, "best_accuracy": accuracy, "best_epoch": 1, "final_accuracy": accuracy,
        "inference": {"name": inference, "accuracy": accuracy, "epoch": 1},
        "epochs": [{"epoch": 1, "step": 10, "train_loss": 1.0, "lr": 1e-3, "test_accuracy": accuracy}],
        "config": {"tag": tag},
    }


def _write(runs, *records):
    runs.mkdir(parents=True, exist_ok=True)
    for rec in records:
        write_record(runs / f"{rec['cell_id']}.json", rec)
    return runs


@pytest.fixture
def runs(tmp_path):
    return _write(
        tmp_path / "runs",
        _record("codellama-7b", "gsm8k", "p", "reft", 0.70),
        _record("codellama-7b", "gsm8k", "p", "sft", 0.60, seed=1),
        _record("codellama-7b", "gsm8k", "p", "sft", 0.62, seed=2),
        _record("codellama-7b", "svamp", "n", "sft", 0.50),
        _record("galactica-6.7b", "gsm8k", "n", "online_st", 0.40),
        _record("galactica-6.7b", "gsm8k", "n", "sft", 0.45),
        _record("galactica-6.7b", "arith", "n", "sft", 0.90),
        _record("codellama-7b", "gsm8k", "p", "reft", 0.80, inference="majority_vote"),
        _record("codellama-7b", "gsm8k", "p", "sft", 0.75, inference="rerank"),
        _record("codellama-7b", "gsm8k", "n", "reft", 0.66, inference="rerank"),
    )


def test_table1_layout_values_and_deltas(runs):
    t1 = tables.format_table(tables.build_table1(tables.load_records(runs), tables.load_paper("value_accuracy")))
    # Rows: paper model order (galactica first), methods in the paper's order.
    assert list(t1.index) == [("galactica-6.7b", "sft"), ("galactica-6.7b", "online_st"),
                              ("codellama-7b", "sft"), ("codellama-7b", "reft")]
    labels = list(dict.fromkeys(label for label, _ in t1.columns))
    assert labels == ["gsm8k N-CoT", "gsm8k P-CoT", "svamp N-CoT", "arith N-CoT", "Average"]
    assert [f for _, f in t1.columns[:3]] == ["ours", "paper", "Δ"]

    reft = t1.loc[("codellama-7b", "reft")]
    assert reft[("gsm8k P-CoT", "ours")] == "70.0"
    assert reft[("gsm8k P-CoT", "paper")] == "75.28"  # ACL version
    assert reft[("gsm8k P-CoT", "Δ")] == "-5.28"

    # Two seeds: mean ± sample std; acl has codellama sft gsm8k p = 63.68.
    sft = t1.loc[("codellama-7b", "sft")]
    assert sft[("gsm8k P-CoT", "ours")] == "61.0 ± 1.4"
    assert sft[("gsm8k P-CoT", "Δ")] == "-2.68"
    # Average over the cells present in the row: (61 + 50) / 2; paper (63.68 + 58.09) / 2 = 60.885.
    assert sft[("Average", "ours")] == "55.5"
    assert sft[("Average", "paper")] == "60.88" or sft[("Average", "paper")] == "60.89"
    assert sft[("Average", "Δ")] in ("-5.38", "-5.39")

    # Missing cells are "—", never invented; arith is not in the paper.
    assert sft[("gsm8k N-CoT", "ours")] == MISSING
    assert sft[("gsm8k N-CoT", "paper")] == "43.59"  # the paper's number is shown, there is no delta
    assert sft[("gsm8k N-CoT", "Δ")] == MISSING
    gal = t1.loc[("galactica-6.7b", "sft")]
    assert gal[("arith N-CoT", "ours")] == "90.0"
    assert gal[("arith N-CoT", "paper")] == MISSING and gal[("arith N-CoT", "Δ")] == MISSING
    assert gal[("Average", "ours")] == "67.5"  # (45 + 90) / 2
    assert gal[("Average", "paper")] == MISSING  # the paper lacks arith: no average to compare


def test_table1_falls_back_to_v1_and_honours_source(runs):
    recs = tables.load_records(runs)
    paper = tables.load_paper("value_accuracy")
    t1 = tables.format_table(tables.build_table1(recs, paper))
    # online_st is only in v1 (45.7 for galactica gsm8k n).
    online = t1.loc[("galactica-6.7b", "online_st")]
    assert online[("gsm8k N-CoT", "paper")] == "45.70"
    assert online[("gsm8k N-CoT", "Δ")] == "-5.70"
    v1 = tables.format_table(tables.build_table1(recs, paper, paper_source="v1"))
    assert v1.loc[("codellama-7b", "reft"), ("gsm8k P-CoT", "paper")] == "72.80"


def test_table2_layout_and_deltas(runs):
    t2 = tables.format_table(tables.build_table2(tables.load_records(runs), tables.load_paper("voting_rerank")))
    assert list(t2.index) == [("codellama-7b", "sft"), ("codellama-7b", "reft")]
    labels = list(dict.fromkeys(label for label, _ in t2.columns))
    assert labels == ["majority_vote gsm8k P-CoT", "rerank gsm8k N-CoT", "rerank gsm8k P-CoT"]
    reft = t2.loc[("codellama-7b", "reft")]
    assert reft[("majority_vote gsm8k P-CoT", "paper")] == "75.00"  # v1
    assert reft[("majority_vote gsm8k P-CoT", "Δ")] == "+5.00"
    assert reft[("rerank gsm8k N-CoT", "Δ")] == "+0.30"  # 66.0 - 65.7
    assert reft[("rerank gsm8k P-CoT", "ours")] == MISSING
    sft = t2.loc[("codellama-7b", "sft")]
    assert sft[("rerank gsm8k P-CoT", "Δ")] == "-2.60"  # 75.0 - 77.6
    readme = tables.build_table2(tables.load_records(runs), tables.load_paper("voting_rerank"),
                                 paper_source="readme")
    assert readme.loc[("codellama-7b", "reft"), ("majority_vote gsm8k P-CoT", "paper")] == 78.0  # numeric


def test_load_records_skips_other_versions_and_tags(tmp_path):
    runs = _write(tmp_path / "runs", _record("tiny", "arith", "n", "sft", 0.5),
                  _record("tiny", "arith", "n", "reft", 0.6, version=2),
                  _record("tiny", "arith", "n", "reft", 0.7, tag="long"))
    with pytest.warns(UserWarning, match="version"):
        df = tables.load_records(runs)
    assert list(df["method"]) == ["sft"]
    with pytest.warns(UserWarning):
        assert list(tables.load_records(runs, tag="long")["accuracy"]) == [0.7]


def test_table1_from_real_tiny_record(tmp_path):
    # Same structure as results/runs/tiny__arith__n__sft__greedy__seed42.json.
    rec = {
        "record_version": 1, "cell_id": "tiny__arith__n__sft__greedy__seed42", "config_hash": "aa568c490612",
        "status": "complete", "created_at": "2026-11-27T01:03:58+0000",
        "coordinates": {"model": "tiny", "dataset": "arith", "cot": "n", "method": "sft",
                        "inference": "greedy", "seed": 42},
        "accuracy": 0.6533333333333333, "best_accuracy": 0.6533333333333333, "best_epoch": 6,
        "final_accuracy": 0.6533333333333333,
        "inference": {"name": "greedy", "accuracy": 0.6533333333333333, "epoch": 6},
        "epochs": [{"epoch": 1, "step": 125, "train_loss": 1.83, "lr": 0.0028, "test_accuracy": 0.043,
                    "test_extracted": 0.9}],
        "method": {}, "timings_s": {"train": 1.0}, "stages": {}, "versions": {}, "hardware": {},
        "config": {"model": "tiny", "dataset": "arith", "cot": "n", "seed": 42, "tag": ""},
    }
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "tiny__arith__n__sft__greedy__seed42.json").write_text(json.dumps(rec))
    t1 = tables.format_table(tables.build_table1(tables.load_records(runs), tables.load_paper("value_accuracy")))
    assert list(t1.index) == [("tiny", "sft")]
    assert t1.loc[("tiny", "sft"), ("arith N-CoT", "ours")] == "65.3"
    assert t1.loc[("tiny", "sft"), ("arith N-CoT", "paper")] == MISSING
    assert t1.loc[("tiny", "sft"), ("Average", "ours")] == "65.3"
    assert tables.build_table2(tables.load_records(runs), tables.load_paper("voting_rerank")).empty


def test_cli_writes_six_files(runs, tmp_path, capsys):
    out = tmp_path / "tables"
    paths = tables.main(["--runs", str(runs), "--out", str(out), "--no-plots"])  # plots: test_plots.py
    names = sorted(p.name for p in paths)
    assert names == sorted(f"table{i}.{e}" for i in (1, 2) for e in ("md", "csv", "tex"))
    assert all((out / n).is_file() for n in names)
    printed = capsys.readouterr().out
    assert str(out / "table1.md") in printed
    md = (out / "table1.md").read_text()
    # the row, with gsm8k P-CoT (the 2nd cell): ours 70.0, paper 75.28, delta -5.28
    assert re.search(r"^\| codellama-7b +\| reft +\|( +\S+ +\|){3} +70\.0 +\| +75\.28 +\| +-5\.28 \|", md, re.MULTILINE)
    assert "| model" in md and "|:---" in md and "---:|" in md  # method columns left, numbers right-aligned
    assert "\\begin{tabular}" in (out / "table2.tex").read_text()
    assert (out / "table1.csv").read_text().startswith("model,method,gsm8k N-CoT ours")


def test_cli_without_records_writes_notes(tmp_path):
    out = tmp_path / "tables"
    (tmp_path / "runs").mkdir()
    paths = tables.main(["--runs", str(tmp_path / "runs"), "--out", str(out)])
    assert len(paths) == 6
    for p in paths:
        assert "No results records" in p.read_text()


def test_rerank_rows_say_which_reranker_protocol_produced_them(tmp_path):
    """A rerank number selected on the test set (the official protocol, optimistic) is marked in the table's
    note column; a `final` reranker's number says so; a table without rerank records has no note column."""
    best = _record("codellama-7b", "gsm8k", "p", "sft", 0.77, inference="rerank")
    best["inference"] |= {"selection": "best_on_test", "selected_on_test": True}
    final = _record("codellama-7b", "gsm8k", "p", "reft", 0.80, inference="rerank")
    final["inference"] |= {"selection": "final", "selected_on_test": False}
    runs = _write(tmp_path / "runs", best, final)
    t2 = tables.build_table2(tables.load_records(runs), tables.load_paper("voting_rerank"))
    notes = t2[(tables.NOTE, "")]
    assert "selected on the test set" in notes.loc[("codellama-7b", "sft")]
    assert notes.loc[("codellama-7b", "reft")] == "rerank: final reranker"
    rule = tables.to_markdown(t2, "Table 2").splitlines()[3].strip("|").split("|")  # the alignment row
    assert [c.strip().startswith(":") and not c.strip().endswith(":") for c in rule] == (
        [True, True] + [False] * (len(rule) - 3) + [True])  # model, method and the note left; numbers right
    greedy = _write(tmp_path / "greedy", _record("codellama-7b", "gsm8k", "p", "sft", 0.6))
    t1 = tables.build_table1(tables.load_records(greedy), tables.load_paper("value_accuracy"))
    assert tables.NOTE not in {label for label, _ in t1.columns}


def test_vote_and_rerank_rows_note_the_bounds_of_their_samples(tmp_path):
    """Table 2's note gives a vote its range (one sample right, any of the K right) and a rerank its chance
    level (a uniform pick among the candidates): the demo's ReFT figures, one row from two records."""
    vote = _record("codellama-7b", "gsm8k", "p", "reft", 0.58, inference="majority_vote")
    vote["inference"] |= {"sample_accuracy": 0.4333, "upper_bound": 0.82}
    rerank = _record("codellama-7b", "gsm8k", "p", "reft", 0.34, inference="rerank")
    rerank["inference"] |= {"selection": "final", "selected_on_test": False, "sample_accuracy": 0.4333,
                            "upper_bound": 0.82, "uniform_pick_accuracy": 0.3444}
    t2 = tables.build_table2(tables.load_records(_write(tmp_path / "runs", vote, rerank)),
                             tables.load_paper("voting_rerank"))
    assert t2[(tables.NOTE, "")].loc[("codellama-7b", "reft")] == (
        "vote: one sample right 43.3%, any of the K 82.0%; rerank: final reranker; "
        "a uniform pick among the candidates 34.4%")


def test_sft_row_notes_its_accuracy_with_the_program_header(tmp_path):
    """inference.header_check: an SFT-recipe cell evaluated from the question alone names, in Table 1's note, its
    checkpoint's greedy accuracy with the P-CoT header in the prompt (the prompt of ReFT's number)."""
    sft = _record("codellama-7b", "gsm8k", "p", "sft", 0.587)
    sft["inference"]["accuracy_with_header"] = 0.6733
    reft = _record("codellama-7b", "gsm8k", "p", "reft", 0.593)
    t1 = tables.build_table1(tables.load_records(_write(tmp_path / "runs", sft, reft)),
                             tables.load_paper("value_accuracy"))
    notes = t1[(tables.NOTE, "")]
    assert notes.loc[("codellama-7b", "sft")] == "67.3 with the program header in the prompt (as the RL methods and the samples)"
    assert notes.loc[("codellama-7b", "reft")] == ""
