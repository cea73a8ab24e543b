"""notebooks/compare_runs.ipynb runs headless (nbclient) on constructed records of two sweeps, shows the
tables, the curves and the comparison; the committed notebook carries no outputs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from reft_exp.results import write_record

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare_runs.ipynb"


def _record(method, seed, acc, epochs, steps_file=None):
    cid = f"tiny__arith__n__{method}__greedy__seed{seed}"
    return {"record_version": 1, "cell_id": cid, "status": "complete",
            "coordinates": {"model": "tiny", "dataset": "arith", "cot": "n", "method": method,
                            "inference": "greedy", "seed": seed},
            "accuracy": acc, "epochs": [{"epoch": e, "test_accuracy": a} for e, a in enumerate(epochs, 1)],
            "method": {} if steps_file is None else {"steps_file": str(steps_file)}, "config": {"tag": ""}}


def _sweep(root: Path, records) -> Path:
    runs = root / "results" / "runs"
    runs.mkdir(parents=True)
    for rec in records:
        write_record(runs / f"{rec['cell_id']}.json", rec)
    return runs


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts += [str(v) for k, v in out.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.timeout(300)
def test_notebook_runs_headless_and_compares_two_sweeps(tmp_path, monkeypatch):
    steps = tmp_path / "steps.jsonl"
    steps.write_text("".join(json.dumps({"epoch": 1, "step": s, "score": 0.1 * s, "correct": 0.05 * s,
                                         "kl": 0.01 * s}) + "\n" for s in range(1, 5)))
    reft = _record("reft", 1, 0.65, [0.5, 0.65], steps_file=steps)
    stage = tmp_path / "cache" / "reft" / "stage"  # what the model wrote at its best epoch (runner outputs/)
    (stage / "outputs").mkdir(parents=True)
    (stage / "outputs" / "eval_epoch2.jsonl").write_text(json.dumps(
        {"item_id": "q7", "question": "Tom has 3 apples and buys 4 more. How many?", "completion": "3 + 4 = 7",
         "pred": 7.0, "gold": 7.0, "correct": True}) + "\n")
    reft |= {"stages": {"reft": {"dir": str(stage)}}, "best_epoch": 2}
    runs_a = _sweep(tmp_path / "a", [_record("sft", 1, 0.50, [0.2, 0.5]), _record("sft", 2, 0.70, [0.3, 0.7]),
                                     reft])
    runs_b = _sweep(tmp_path / "b", [_record("sft", 1, 0.80, [0.4, 0.8])])
    monkeypatch.setenv("REFT_RUNS_DIR", str(runs_a))
    monkeypatch.setenv("REFT_RUNS_DIR_B", str(runs_b))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = _text(nb)
    assert "tiny__arith__n__reft__greedy__seed1" in text  # the records table
    assert "Tom has 3 apples" in text and "eval_epoch2.jsonl" in text  # what the model wrote
    assert "60.0 ± 14.1" in text  # Table 1: sft over two seeds (50, 70)
    assert "cells in both: 1, only in A: 1, only in B: 0" in text
    assert "mean Δ (B - A) over shared cells: +20.00 points" in text  # 80 - mean(50, 70)
    pngs = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pngs) == 3  # accuracy per epoch (A), RL curves (A), accuracy per epoch (B)
