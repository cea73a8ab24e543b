"""Paper tables from the results records: ours beside the paper's numbers.

``python -m reft_exp.tables [--runs results/runs] [--out results/tables] [--plots results/plots] [--wandb]``

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

Plots (PNG, matplotlib's Agg canvas) go to ``--plots`` (default ``plots/`` beside ``--out``):
``accuracy_per_epoch.png`` (greedy test accuracy per epoch, one panel per model / dataset / CoT, one line per
method) and ``rl_curves__<model>__<dataset>__<cot>.png`` (reward, fraction correct and KL per PPO step from
the RL records' ``steps.jsonl``). Several seeds: mean with a ±1 std band. Points a record does not have are
left out and a steps file that cannot be read is named on the figure; nothing is interpolated or invented.
``--wandb`` also logs the tables as ``wandb.Table`` s and the plots as images to one W&B run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
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

def _iter_records(runs_dir: str | Path, tag: str | None) -> list[tuple[Path, dict]]:
    """(path, record) of every complete record under ``runs_dir`` with variant tag ``tag`` (None = all)."""
    out = []
    for path in sorted(Path(runs_dir).glob("*.json")):
        try:
            rec = read_record(path)
        except ValueError as err:
            warnings.warn(f"skipping {err}", stacklevel=3)
            continue
        if rec.get("status", "complete") != "complete" or rec.get("accuracy") is None:
            warnings.warn(f"skipping {path}: record is not complete", stacklevel=3)
            continue
        if tag is not None and _tag(rec) != tag:
            continue
        out.append((path, rec))
    return out


def _tag(rec: dict) -> str:
    return (rec.get("config") or {}).get("tag") or ""


def _coords(rec: dict) -> dict:
    c = rec["coordinates"]
    return {"model": str(c["model"]), "dataset": str(c["dataset"]), "cot": str(c["cot"]),
            "method": str(c["method"]), "inference": str(c["inference"]), "seed": c.get("seed"),
            "tag": _tag(rec)}


def load_records(runs_dir: str | Path, tag: str | None = "") -> pd.DataFrame:
    """One row per complete results record under ``runs_dir`` (``accuracy`` is a fraction 0-1).

    Records from another record version, unreadable ones and incomplete ones are skipped with a warning.
    ``tag`` keeps only the records of that variant tag ("" = untagged runs); ``None`` keeps all.
    """
    rows = [{"cell_id": rec.get("cell_id", path.stem), **_coords(rec), "accuracy": float(rec["accuracy"]),
             "path": str(path)} for path, rec in _iter_records(runs_dir, tag)]
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
    stats = (pct.groupby(["model", "method", "inference", "dataset", "cot"])["acc"]
             .agg(["mean", "std", "count"]))
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


# ---------------------------------------------------------------- comparing two sweeps

CELL_KEYS = ["model", "dataset", "cot", "method", "inference"]


def compare(records_a: pd.DataFrame, records_b: pd.DataFrame,
            labels: tuple[str, str] = ("A", "B")) -> pd.DataFrame:
    """Accuracy (percent, mean over seeds) of each cell in two sets of records side by side, with the delta
    ``B - A``. Cells only one side has are kept, the other side NaN (no delta)."""
    def side(df: pd.DataFrame, label: str) -> pd.DataFrame:
        if df.empty:
            return pd.DataFrame(columns=[f"{label} mean", f"{label} std", f"{label} seeds"],
                                index=pd.MultiIndex.from_tuples([], names=CELL_KEYS))
        g = (df.assign(acc=df["accuracy"] * 100.0).groupby(CELL_KEYS)["acc"].agg(["mean", "std", "count"]))
        return g.rename(columns={"mean": f"{label} mean", "std": f"{label} std", "count": f"{label} seeds"})

    a, b = labels
    out = side(records_a, a).join(side(records_b, b), how="outer")
    out[f"Δ ({b} - {a})"] = out[f"{b} mean"] - out[f"{a} mean"]
    return out.sort_index()


# ---------------------------------------------------------------- curves

TRAIN_KEYS = ["model", "dataset", "cot", "method", "seed", "tag"]  # records sharing one training run
PANEL_KEYS = ["model", "dataset", "cot"]
VOTE_COLUMNS = TRAIN_KEYS + ["k", "vote_accuracy", "greedy_accuracy"]
STEP_METRICS = {"score": "reward (score)", "correct": "fraction correct", "kl": "KL to the reference"}


@dataclass
class Curves:
    """Per-epoch and per-step training curves of the records (one entry per training run).

    ``epochs``: TRAIN_KEYS + ``epoch``, ``test_accuracy`` (fraction; NaN where that epoch was not evaluated).
    ``steps``: TRAIN_KEYS + ``epoch``, ``step`` and the per-step stats of an RL method's ``steps.jsonl``
    (``score``, ``correct``, ``kl``, ...). ``missing``: TRAIN_KEYS + ``steps_file``, ``reason`` for each
    record whose steps file is named but cannot be read (shown as missing in the plots).
    ``cells``: TRAIN_KEYS of every training run, with or without curves.
    ``votes``: TRAIN_KEYS + ``k``, ``vote_accuracy``, ``greedy_accuracy`` from the majority-vote records'
    ``vote_accuracy_by_k`` (vote accuracy with K of the samples).
    """

    epochs: pd.DataFrame
    steps: pd.DataFrame
    missing: pd.DataFrame
    cells: pd.DataFrame
    votes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=VOTE_COLUMNS))


def _training_runs(pairs: list[tuple[Path, dict]]) -> list[tuple[dict, dict]]:
    """One (coordinates, record) per training run: records differing only in inference share their training
    (and their curves); the greedy one is preferred."""
    chosen: dict[tuple, tuple[dict, dict]] = {}
    for _, rec in pairs:
        c = _coords(rec)
        key = tuple(c[k] for k in TRAIN_KEYS)
        if key not in chosen or (c["inference"] == "greedy" and chosen[key][0]["inference"] != "greedy"):
            chosen[key] = (c, rec)
    return list(chosen.values())


def _read_jsonl(path: Path) -> list[dict]:
    """The rows of a ``steps.jsonl`` (the layout of ``reft_exp.methods.reft.read_steps``)."""
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _find(steps_file: str, runs_dir: Path) -> Path:
    """A steps file path as recorded (relative to the launch folder), else relative to the results folder."""
    p = Path(steps_file)
    if p.exists() or p.is_absolute():
        return p
    alt = runs_dir.resolve().parent.parent / p
    return alt if alt.exists() else p


def _vote_rows(pairs: list[tuple[Path, dict]]) -> list[dict]:
    """One row per (majority-vote record, K) from its ``vote_accuracy_by_k``."""
    rows = []
    for _, rec in pairs:
        c, inf = _coords(rec), rec.get("inference") or {}
        if c["inference"] != "majority_vote" or not inf.get("vote_accuracy_by_k"):
            continue
        greedy = inf.get("greedy_accuracy")
        rows += [{k: c[k] for k in TRAIN_KEYS} | {"k": int(k), "vote_accuracy": v,
                                                  "greedy_accuracy": math.nan if greedy is None else greedy}
                 for k, v in inf["vote_accuracy_by_k"].items()]
    return rows


def load_curves(runs_dir: str | Path, tag: str | None = "") -> Curves:
    """The training curves of the complete records under ``runs_dir`` (see :class:`Curves`)."""
    runs_dir = Path(runs_dir)
    pairs = _iter_records(runs_dir, tag)
    cells, ep_rows, step_rows, missing = [], [], [], []
    for c, rec in _training_runs(pairs):
        base = {k: c[k] for k in TRAIN_KEYS}
        cells.append(base)
        for row in rec.get("epochs") or []:
            acc = row.get("test_accuracy")
            ep_rows.append(base | {"epoch": row.get("epoch"),
                                   "test_accuracy": math.nan if acc is None else acc})
        steps_file = (rec.get("method") or {}).get("steps_file")
        if not steps_file:
            continue
        path = _find(steps_file, runs_dir)
        try:
            rows = _read_jsonl(path)
        except (OSError, json.JSONDecodeError) as err:
            reason = "not found" if isinstance(err, FileNotFoundError) else f"unreadable ({err})"
            missing.append(base | {"steps_file": str(path), "reason": reason})
            continue
        if not rows:
            missing.append(base | {"steps_file": str(path), "reason": "empty"})
        step_rows += [base | row for row in rows]
    return Curves(epochs=pd.DataFrame(ep_rows, columns=TRAIN_KEYS + ["epoch", "test_accuracy"]),
                  steps=pd.DataFrame(step_rows) if step_rows else pd.DataFrame(columns=TRAIN_KEYS + ["step"]),
                  missing=pd.DataFrame(missing, columns=TRAIN_KEYS + ["steps_file", "reason"]),
                  cells=pd.DataFrame(cells, columns=TRAIN_KEYS),
                  votes=pd.DataFrame(_vote_rows(pairs), columns=VOTE_COLUMNS))


def _panels(*frames: pd.DataFrame) -> list[tuple[str, str, str]]:
    found = {tuple(row) for f in frames if not f.empty for row in f[PANEL_KEYS].to_numpy().tolist()}
    models = _order([k[0] for k in found], MODEL_ORDER)
    datasets = _order([k[1] for k in found], DATASET_ORDER)
    cots = _order([k[2] for k in found], COT_ORDER)
    return [(m, d, c) for m in models for d in datasets for c in cots if (m, d, c) in found]


def _method_colors(methods) -> dict[str, str]:
    ordered = _order(methods, METHOD_ORDER)
    return {m: f"C{i % 10}" for i, m in enumerate(ordered)}


def _select(df: pd.DataFrame, panel: tuple[str, str, str], method: str | None = None) -> pd.DataFrame:
    if df.empty:
        return df
    mask = (df["model"] == panel[0]) & (df["dataset"] == panel[1]) & (df["cot"] == panel[2])
    if method is not None:
        mask &= df["method"] == method
    return df[mask]


def _mean_band(ax, df: pd.DataFrame, x: str, y: str, scale: float, smooth: int, color: str,
               label: str) -> bool:
    """Mean over seeds of ``y`` against ``x`` with a ±1 std band where several seeds have a value; points
    without a value are left out (never interpolated into data). Returns False when there is nothing."""
    df = df[[x, y, "seed"]].dropna(subset=[y])
    if df.empty:
        return False
    if smooth > 1:  # moving average within each seed's run
        df = df.sort_values(["seed", x])
        df[y] = df.groupby("seed")[y].transform(lambda v: v.rolling(smooth, min_periods=1).mean())
    g = df.groupby(x)[y].agg(["mean", "std", "count"]).sort_index()
    mean, std = g["mean"] * scale, g["std"] * scale
    n_seeds = df["seed"].nunique()
    label = f"{label} (mean ± std, {n_seeds} seeds)" if n_seeds > 1 else label
    marker = "o" if len(g) <= 60 else None
    ax.plot(g.index, mean, color=color, marker=marker, markersize=3, linewidth=1.2, label=label)
    if n_seeds > 1:
        band = g["count"] > 1
        ax.fill_between(g.index, (mean - std).where(band), (mean + std).where(band), color=color, alpha=0.2,
                        linewidth=0)
    return True


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.4",
            wrap=True)


def _figure(nrows: int, ncols: int, width: float = 4.6, height: float = 3.4):
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state: safe in scripts and notebooks

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def accuracy_figure(curves: Curves):
    """Greedy test accuracy per epoch: one panel per (model, dataset, CoT), one line per method (mean ± std
    over seeds). A method whose records carry no per-epoch accuracy is listed as such. None if no records."""
    panels = _panels(curves.cells)
    if not panels:
        return None
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(nrows, ncols)
    colors = _method_colors(curves.cells["method"])
    from matplotlib.ticker import MaxNLocator

    for ax, panel in zip(axes.flat, panels):
        methods = _order(_select(curves.cells, panel)["method"], METHOD_ORDER)
        for method in methods:
            drawn = _mean_band(ax, _select(curves.epochs, panel, method), "epoch", "test_accuracy", 100.0, 1,
                               colors[method], method)
            if not drawn:
                ax.plot([], [], color=colors[method], linestyle=":", label=f"{method}: no per-epoch data")
        ax.set_title(f"{panel[0]} / {panel[1]} / {panel[2].upper()}-CoT", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("greedy test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return fig


def step_figure(curves: Curves, panel: tuple[str, str, str], smooth: int = 1):
    """Per-step RL curves of one (model, dataset, CoT): reward, fraction correct and KL (mean ± std over
    seeds, one line per method that wrote a steps file). Steps files that cannot be read are named."""
    steps = _select(curves.steps, panel)
    missing = _select(curves.missing, panel)
    metrics = list(STEP_METRICS)
    fig, axes = _figure(1, len(metrics))
    methods = _order(list(steps["method"]) + list(missing["method"]), METHOD_ORDER)
    colors = _method_colors(curves.cells["method"])
    from matplotlib.ticker import MaxNLocator

    for ax, metric in zip(axes.flat, metrics):
        drawn_any = False
        for method in methods:
            sub = _select(steps, panel, method)
            if metric in sub.columns and _mean_band(ax, sub, "step", metric, 1.0, smooth, colors[method],
                                                    method):
                drawn_any = True
            elif not sub.empty:
                ax.plot([], [], color=colors[method], linestyle=":", label=f"{method}: {metric} not recorded")
        if not drawn_any:
            _note(ax, f"no {metric} data")
        ax.set_title(STEP_METRICS[metric] + (f" (moving average {smooth} steps)" if smooth > 1 else ""),
                     fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    title = f"{panel[0]} / {panel[1]} / {panel[2].upper()}-CoT: RL training curves"
    if not missing.empty:
        lost = "; ".join(f"{r.method} seed {r.seed}: {r.reason} ({r.steps_file})"
                         for r in missing.itertuples())
        title += f"\nmissing steps data -- {lost}"
    fig.suptitle(title, fontsize=9)
    return fig


def vote_figure(curves: Curves):
    """Majority-vote accuracy against the number of samples K (log scale), one panel per (model, dataset,
    CoT), one line per method (mean over seeds) with its greedy accuracy dashed in the same colour: where
    voting passes greedy. None without vote curves."""
    panels = _panels(curves.votes)
    if not panels:
        return None
    from matplotlib.ticker import FuncFormatter

    fig, axes = _figure(1, len(panels))
    colors = _method_colors(list(curves.cells["method"]) + list(curves.votes["method"]))
    for ax, panel in zip(axes.flat, panels):
        sub = _select(curves.votes, panel)
        for method in _order(sub["method"], METHOD_ORDER):
            mean = sub[sub["method"] == method].groupby("k")[["vote_accuracy", "greedy_accuracy"]].mean()
            ax.plot(mean.index, 100 * mean["vote_accuracy"], marker="o", color=colors[method],
                    label=f"{method}: vote")
            greedy = mean["greedy_accuracy"].dropna()
            if not greedy.empty:
                ax.axhline(100 * greedy.iloc[0], color=colors[method], linestyle="--", linewidth=1,
                           label=f"{method}: greedy")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 1, 2, 4, ... not 2^0, 2^1, ...
        ax.set_title(f"{panel[0]} / {panel[1]} / {panel[2].upper()}-CoT: voting vs samples", fontsize=9)
        ax.set_xlabel("samples per question K")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def rl_panels(curves: Curves) -> list[tuple[str, str, str]]:
    """The (model, dataset, CoT) that have RL step curves (a steps file, read or missing)."""
    return _panels(curves.steps, curves.missing)


def _stem(*parts: str) -> str:
    return "__".join(re.sub(r"[^A-Za-z0-9.+-]+", "_", p) for p in parts)


def write_plots(curves: Curves, out_dir: Path, smooth: int = 1, dpi: int = 110) -> list[Path]:
    """``accuracy_per_epoch.png``, one ``rl_curves__<model>__<dataset>__<cot>.png`` per (model, dataset, CoT)
    with an RL method's steps file (read or missing), and ``voting_by_k.png`` when majority-vote records carry
    vote accuracy by K. Nothing is written when there are no records."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig = accuracy_figure(curves)
    if fig is not None:
        paths.append(out_dir / "accuracy_per_epoch.png")
        fig.savefig(paths[-1], dpi=dpi)
    for panel in rl_panels(curves):
        paths.append(out_dir / f"{_stem('rl_curves', *panel)}.png")
        step_figure(curves, panel, smooth).savefig(paths[-1], dpi=dpi)
    fig = vote_figure(curves)
    if fig is not None:
        paths.append(out_dir / "voting_by_k.png")
        fig.savefig(paths[-1], dpi=dpi)
    return paths


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


def _wandb_defaults() -> dict:
    """project / entity / mode of ``conf/logger/wandb.yaml`` (the app's W&B settings), when present."""
    path = Path(__file__).resolve().parents[1] / "conf" / "logger" / "wandb.yaml"
    defaults = {"project": "reft_exp", "entity": None, "mode": "online"}
    if path.exists():
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(OmegaConf.load(path))
        defaults.update({k: node[k] for k in defaults if k in node})
    return defaults


def log_to_wandb(tables: dict[str, pd.DataFrame], plots: list[Path], project: str, entity: str | None,
                 mode: str, group: str | None, name: str, config: dict) -> str | None:
    """Log the tables as ``wandb.Table`` s (and the plots as images) to one W&B run (``job_type=tables``).
    Falls back like the app's tracker (offline without a key or network; nothing without wandb).
    Returns the run's folder, or None when nothing was logged."""
    from reft_exp.tracking import init_wandb

    run = init_wandb(project, entity, mode, group, name, ["tables"], config, job_type="tables")
    if run is None:
        return None
    import wandb

    payload = {}
    for key, table in tables.items():
        if not table.empty:
            header, body = _flat(table)
            payload[key] = wandb.Table(columns=header, data=body)
    payload.update({f"plots/{p.stem}": wandb.Image(str(p)) for p in plots})
    run.log(payload)
    run_dir = str(Path(run.dir).parent)
    run.finish()
    return run_dir


def main(argv: Sequence[str] | None = None) -> list[Path]:
    wb = _wandb_defaults()
    ap = argparse.ArgumentParser(prog="python -m reft_exp.tables", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="results/runs", help="directory of results records (*.json)")
    ap.add_argument("--out", default="results/tables", help="where to write table{1,2}.{md,csv,tex}")
    ap.add_argument("--plots", default=None,
                    help="where to write the PNG plots (default: 'plots' beside --out, e.g. results/plots)")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    ap.add_argument("--smooth", type=int, default=1, help="moving-average window (steps) of the RL curves")
    ap.add_argument("--paper-source", default="acl", help="preferred paper source for Table 1 (acl or v1)")
    ap.add_argument("--voting-source", default="v1", help="preferred paper source for Table 2 (v1 or readme)")
    ap.add_argument("--tag", default="", help="variant tag of the records to use ('' = untagged runs)")
    ap.add_argument("--wandb", action="store_true", help="also log the tables and plots to a W&B run")
    ap.add_argument("--wandb-project", default=wb["project"])
    ap.add_argument("--wandb-entity", default=wb["entity"])
    ap.add_argument("--wandb-mode", default=wb["mode"], help="online | offline | disabled (WANDB_MODE wins)")
    ap.add_argument("--wandb-group", default=None, help="W&B group, e.g. the sweep's (default: none)")
    args = ap.parse_args(argv)

    records = load_records(args.runs, tag=args.tag)
    out = Path(args.out)
    t1 = build_table1(records, load_paper("value_accuracy"), paper_source=args.paper_source)
    t2 = build_table2(records, load_paper("voting_rerank"), paper_source=args.voting_source)
    paths = write_table(t1, out, "table1", TITLE1) + write_table(t2, out, "table2", TITLE2)
    plots: list[Path] = []
    if not args.no_plots:
        plots_dir = Path(args.plots) if args.plots else out.parent / "plots"
        plots = write_plots(load_curves(args.runs, tag=args.tag), plots_dir, smooth=args.smooth)
        if not plots:
            print(f"no results records under {args.runs}: no plots written")
    paths += plots
    for p in paths:
        print(p)
    if args.wandb:
        name = f"tables-{Path(args.runs).resolve().parent.name}"
        run_dir = log_to_wandb({"table1": t1, "table2": t2}, plots, args.wandb_project, args.wandb_entity,
                               args.wandb_mode, args.wandb_group, name,
                               {"runs": str(args.runs), "tag": args.tag, "paper_source": args.paper_source,
                                "voting_source": args.voting_source, "records": len(records)})
        if run_dir:
            print(f"W&B run: {run_dir}")
    return paths


if __name__ == "__main__":
    main()
