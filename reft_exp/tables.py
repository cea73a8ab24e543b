"""Paper tables from the results records: ours beside the paper's numbers.

``python -m reft_exp.tables [--runs results/runs] [--out results/tables] [--paper-source acl]``

* Table 1 -- value accuracy with greedy decoding: rows (model, method), columns (dataset, CoT) plus an
  "Average" column (Table 2 of the paper).
* Table 2 -- majority voting and reward-model reranking: rows (model, method), columns
  (inference, dataset, CoT) from the records whose inference is not greedy (Table 4 / Table 5 of the paper).

Each cell has three fields: ``ours`` (percent, one decimal; ``mean ± std`` when several seeds),
``paper`` and ``Δ`` (ours - paper). A cell with no number is "—"; nothing is ever filled in.

The paper's numbers live in ``reft_exp/paper/`` (copied verbatim from the project's reference data):

* ``paper_value_accuracy.csv`` (source, model, method, dataset, cot, accuracy): source ``v1`` is
  arXiv:2401.08967v1 (Luong et al., 2024), Table 2, which also has the MathQA-numeric rows;
  source ``acl`` is the ACL 2024 version, Table 2 (SFT and ReFT rows only).
* ``paper_voting_rerank.csv`` (source, model, method, inference, dataset, cot, accuracy): source ``v1``
  is arXiv v1 Tables 4/5 (GSM8K majority voting and reranking); source ``readme`` is the numbers
  in the README of the authors' repository (github.com/lqtrung1998/mwp_ReFT).

The preferred source is used where it has the cell, the other source(s) otherwise.
"""

from __future__ import annotations

import argparse
import csv
import io
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import pandas as pd

from reft_exp.results import read_record

MISSING = "—"
FIELDS = ("ours", "paper", "Δ")
MODEL_ORDER = ("galactica-6.7b", "codellama-7b")
METHOD_ORDER = ("sft", "offline_st", "online_st", "reft")
DATASET_ORDER = ("gsm8k", "svamp", "mathqa", "mathqa_numeric")
COT_ORDER = ("n", "p")
INFERENCE_ORDER = ("majority_vote", "rerank")
PAPER_FILES = {"value_accuracy": "paper_value_accuracy.csv", "voting_rerank": "paper_voting_rerank.csv"}
RECORD_COLUMNS = ["cell_id", "model", "dataset", "cot", "method", "inference", "seed", "tag", "accuracy",
                  "path"]


# ---------------------------------------------------------------- loading

def load_records(runs_dir: str | Path, tag: str | None = "") -> pd.DataFrame:
    """One row per complete results record under ``runs_dir`` (``accuracy`` is a fraction 0-1).

    Records from another record version, unreadable ones and incomplete ones are skipped with a warning.
    ``tag`` keeps only the records of that variant tag ("" = untagged runs); ``None`` keeps all.
    """
    rows = []
    for path in sorted(Path(runs_dir).glob("*.json")):
        try:
            rec = read_record(path)
        except ValueError as err:
            warnings.warn(f"skipping {err}", stacklevel=2)
            continue
        if rec.get("status", "complete") != "complete" or rec.get("accuracy") is None:
            warnings.warn(f"skipping {path}: record is not complete", stacklevel=2)
            continue
        rec_tag = (rec.get("config") or {}).get("tag") or ""
        if tag is not None and rec_tag != tag:
            continue
        c = rec["coordinates"]
        rows.append({"cell_id": rec.get("cell_id", path.stem), "model": str(c["model"]),
                     "dataset": str(c["dataset"]), "cot": str(c["cot"]), "method": str(c["method"]),
                     "inference": str(c["inference"]), "seed": c.get("seed"), "tag": rec_tag,
                     "accuracy": float(rec["accuracy"]), "path": str(path)})
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)


def load_paper(kind: str) -> pd.DataFrame:
    """The paper's numbers (percent): ``kind`` is "value_accuracy" (Table 1) or "voting_rerank" (Table 2)."""
    if kind not in PAPER_FILES:
        raise ValueError(f"unknown paper table {kind!r}; one of {sorted(PAPER_FILES)}")
    text = resources.files("reft_exp.paper").joinpath(PAPER_FILES[kind]).read_text()
    df = pd.read_csv(io.StringIO(text), dtype={"cot": str})
    if "inference" not in df.columns:
        df["inference"] = "greedy"
    return df


# ---------------------------------------------------------------- building

def _order(values, preferred: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(values))
    return [v for v in preferred if v in present] + sorted(v for v in present if v not in preferred)


def _fmt(x: float | None, digits: int, sign: bool = False) -> str:
    if x is None or pd.isna(x):
        return MISSING
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _paper_lookup(paper_df: pd.DataFrame | None, source: str) -> dict[tuple, float]:
    """(model, method, inference, dataset, cot) -> paper accuracy, preferring ``source``."""
    if paper_df is None or paper_df.empty:
        return {}
    sources = [source] + [s for s in dict.fromkeys(paper_df["source"]) if s != source]
    out: dict[tuple, float] = {}
    for src in reversed(sources):  # the preferred source is written last and wins
        for r in paper_df[paper_df["source"] == src].itertuples(index=False):
            inference = getattr(r, "inference", "greedy")
            out[(r.model, r.method, inference, r.dataset, str(r.cot))] = float(r.accuracy)
    return out


def _cell_label(dataset: str, cot: str, inference: str | None = None) -> str:
    label = f"{dataset} {cot.upper()}-CoT"
    return f"{inference} {label}" if inference else label


def _build(records: pd.DataFrame, paper: dict[tuple, float], cells: list[tuple[str, str, str]],
           with_average: bool, label_inference: bool) -> pd.DataFrame:
    pct = records.assign(acc=records["accuracy"] * 100.0)
    stats = pct.groupby(["model", "method", "inference", "dataset", "cot"])["acc"].agg(["mean", "std", "count"])
    models = _order(records["model"], MODEL_ORDER)
    rows = [(m, meth) for m in models
            for meth in _order(records.loc[records["model"] == m, "method"], METHOD_ORDER)]
    labels = [_cell_label(d, c, inf if label_inference else None) for inf, d, c in cells]
    if with_average:
        labels.append("Average")
    columns = pd.MultiIndex.from_product([labels, FIELDS])
    table = pd.DataFrame(MISSING, index=pd.MultiIndex.from_tuples(rows, names=["model", "method"]),
                         columns=columns)
    for model, method in rows:
        ours_means, paper_vals = [], []
        for label, (inf, ds, cot) in zip(labels, cells):
            key = (model, method, inf, ds, cot)
            p = paper.get(key)
            if key in stats.index:
                mean, std, n = stats.loc[key]
                ours = _fmt(mean, 1) + (f" ± {std:.1f}" if n > 1 else "")
                ours_means.append(mean)
                paper_vals.append(p)
            else:
                mean = None
                ours = MISSING
            table.loc[(model, method), (label, "ours")] = ours
            table.loc[(model, method), (label, "paper")] = _fmt(p, 2)
            table.loc[(model, method), (label, "Δ")] = _fmt(mean - p, 2, sign=True) if (
                mean is not None and p is not None) else MISSING
        if with_average and ours_means:
            avg = sum(ours_means) / len(ours_means)
            table.loc[(model, method), ("Average", "ours")] = _fmt(avg, 1)
            # The paper's average only over the same cells as ours, and only when it has all of them.
            if all(p is not None for p in paper_vals):
                pavg = sum(paper_vals) / len(paper_vals)
                table.loc[(model, method), ("Average", "paper")] = _fmt(pavg, 2)
                table.loc[(model, method), ("Average", "Δ")] = _fmt(avg - pavg, 2, sign=True)
    return table


def build_table1(records_df: pd.DataFrame, paper_df: pd.DataFrame | None = None,
                 paper_source: str = "acl") -> pd.DataFrame:
    """Value accuracy (greedy). Rows (model, method); columns (cell label, field) with an "Average" cell."""
    records = records_df[records_df["inference"] == "greedy"] if len(records_df) else records_df
    if records.empty:
        return pd.DataFrame()
    datasets = _order(records["dataset"], DATASET_ORDER)
    cells = [("greedy", d, c) for d in datasets
             for c in _order(records.loc[records["dataset"] == d, "cot"], COT_ORDER)]
    if paper_df is None:
        paper_df = load_paper("value_accuracy")
    return _build(records, _paper_lookup(paper_df, paper_source), cells, with_average=True,
                  label_inference=False)


def build_table2(records_df: pd.DataFrame, paper_df: pd.DataFrame | None = None,
                 paper_source: str = "v1") -> pd.DataFrame:
    """Voting / reranking: rows (model, method); columns (inference dataset CoT, field); no average."""
    records = records_df[records_df["inference"] != "greedy"] if len(records_df) else records_df
    if records.empty:
        return pd.DataFrame()
    cells = []
    for inf in _order(records["inference"], INFERENCE_ORDER):
        sub = records[records["inference"] == inf]
        for d in _order(sub["dataset"], DATASET_ORDER):
            cells += [(inf, d, c) for c in _order(sub.loc[sub["dataset"] == d, "cot"], COT_ORDER)]
    if paper_df is None:
        paper_df = load_paper("voting_rerank")
    return _build(records, _paper_lookup(paper_df, paper_source), cells, with_average=False,
                  label_inference=True)


# ---------------------------------------------------------------- writing

def _flat(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["model", "method"] + [f"{label} {field}" for label, field in table.columns]
    body = [[m, meth] + [str(v) for v in row] for (m, meth), row in zip(table.index, table.to_numpy())]
    return header, body


def to_markdown(table: pd.DataFrame, title: str) -> str:
    header, body = _flat(table)
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join([":---", ":---"] + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    header, body = _flat(table)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    return buf.getvalue()


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("Δ", r"$\Delta$"), (MISSING, "--")):
        s = s.replace(a, b)
    return s


def to_latex(table: pd.DataFrame, caption: str) -> str:
    labels = list(dict.fromkeys(label for label, _ in table.columns))
    spec = "ll" + "rrr" * len(labels)
    top = " & ".join(["", ""] + [rf"\multicolumn{{3}}{{c}}{{{_tex(lbl)}}}" for lbl in labels])
    sub = " & ".join(["Model", "Method"] + [_tex(f) for _ in labels for f in FIELDS])
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(caption)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule", top + r" \\", sub + r" \\", r"\midrule"]
    for (m, meth), row in zip(table.index, table.to_numpy()):
        lines.append(" & ".join(_tex(str(v)) for v in [m, meth, *row]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, out_dir: Path, stem: str, title: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "tex")]
    if table.empty:
        note = f"No results records for {title}."
        texts = [f"# {title}\n\n{note}\n", f"note\n{note}\n", f"% {note}\n"]
    else:
        texts = [to_markdown(table, title), to_csv(table), to_latex(table, title)]
    for path, text in zip(paths, texts):
        path.write_text(text)
    return paths


TITLE1 = "Table 1: value accuracy (%), greedy decoding -- ours, paper, Δ = ours - paper"
TITLE2 = "Table 2: majority voting and reranking accuracy (%) -- ours, paper, Δ = ours - paper"


def main(argv: Sequence[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(prog="python -m reft_exp.tables", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="results/runs", help="directory of results records (*.json)")
    ap.add_argument("--out", default="results/tables", help="where to write table{1,2}.{md,csv,tex}")
    ap.add_argument("--paper-source", default="acl", help="preferred paper source for Table 1 (acl or v1)")
    ap.add_argument("--voting-source", default="v1", help="preferred paper source for Table 2 (v1 or readme)")
    ap.add_argument("--tag", default="", help="variant tag of the records to use ('' = untagged runs)")
    args = ap.parse_args(argv)

    records = load_records(args.runs, tag=args.tag)
    out = Path(args.out)
    t1 = build_table1(records, load_paper("value_accuracy"), paper_source=args.paper_source)
    t2 = build_table2(records, load_paper("voting_rerank"), paper_source=args.voting_source)
    paths = write_table(t1, out, "table1", TITLE1) + write_table(t2, out, "table2", TITLE2)
    for p in paths:
        print(p)
    return paths


if __name__ == "__main__":
    main()
