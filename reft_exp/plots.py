"""Plots from the results records (PNG, matplotlib's Agg canvas; no pyplot state, safe in notebooks).

``accuracy_per_epoch.png`` (greedy test accuracy per epoch, one panel per model / dataset / CoT, one line per
method), ``rl_curves__<model>__<dataset>__<cot>.png`` (reward, fraction correct, KL and response length per
step from the RL records' ``steps.jsonl``: ReFT, online self-training, GRPO, RLOO) and ``voting_by_k.png``
(majority-vote accuracy against the number of samples).
Several seeds: mean with a ±1 std band. Points a record does not have are left out and a steps file that
cannot be read is named on the figure; nothing is interpolated or invented. ``python -m reft_exp.tables``
writes them beside the tables.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from reft_exp.tables import (
    COT_ORDER,
    DATASET_ORDER,
    METHOD_ORDER,
    MODEL_ORDER,
    _coords,
    _iter_records,
    _order,
    budget,
)
from reft_exp.utils import read_jsonl

TRAIN_KEYS = ["model", "dataset", "cot", "method", "seed", "tag"]  # records sharing one training run
PANEL_KEYS = ["model", "dataset", "cot"]
VOTE_COLUMNS = TRAIN_KEYS + ["k", "vote_accuracy", "greedy_accuracy"]
STEP_METRICS = {"score": "reward (score)", "correct": "fraction correct", "kl": "KL to the reference",
                "response_length": "response length (tokens)"}
# Legends go under their panel (budget labels are long: inside the axes they covered the curves and squeezed the
# panel to nothing), labels wrapped to the panel's width; the figure grows by a line's height per legend line.
PANEL_IN = (4.6, 3.4)  # width, height of one panel without its legend (inches)
LEGEND_FONTSIZE = 7
LEGEND_WRAP = 70  # characters per legend line: a PANEL_IN-wide panel at LEGEND_FONTSIZE
LEGEND_LINE_IN = 0.14  # inches per legend line


@dataclass
class Curves:
    """Per-epoch and per-step training curves of the records (one entry per training run).

    ``epochs``: TRAIN_KEYS + ``epoch``, ``test_accuracy`` (fraction; NaN where that epoch was not evaluated).
    ``steps``: TRAIN_KEYS + ``epoch``, ``step`` and the per-step stats of an RL method's ``steps.jsonl``
    (``score``, ``correct``, ``kl``, ...). ``missing``: TRAIN_KEYS + ``steps_file``, ``reason`` for each
    record whose steps file is named but cannot be read (shown as missing in the plots).
    ``cells``: TRAIN_KEYS of every training run, with or without curves, and its ``budget``
    (:func:`reft_exp.tables.budget`, shown in the legends).
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
        cells.append(base | {"budget": budget(rec)})
        for row in rec.get("epochs") or []:
            acc = row.get("test_accuracy")
            ep_rows.append(base | {"epoch": row.get("epoch"),
                                   "test_accuracy": math.nan if acc is None else acc})
        steps_file = (rec.get("method") or {}).get("steps_file")
        if not steps_file:
            continue
        path = _find(steps_file, runs_dir)
        try:
            rows = read_jsonl(path)
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
                  cells=pd.DataFrame(cells, columns=TRAIN_KEYS + ["budget"]),
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


def _label(curves: Curves, panel: tuple[str, str, str], method: str) -> str:
    """``method (budget)``: the budget of the method's first run in the panel (the legend names what ran)."""
    cells = _select(curves.cells, panel, method)
    found = [b for b in cells["budget"] if b] if "budget" in cells else []
    return f"{method} ({found[0]})" if found else method


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


def _figure(nrows: int, ncols: int):
    """A figure of ``nrows`` x ``ncols`` panels, each a subfigure holding one axes and, under it, its legend
    (:func:`_legend_below`). Returns the figure, the subfigures and their axes (2-D arrays)."""
    import numpy as np
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state: safe in scripts and notebooks

    fig = Figure(figsize=(PANEL_IN[0] * ncols, PANEL_IN[1] * nrows), layout="constrained")
    subs = fig.subfigures(nrows, ncols, squeeze=False)
    axes = np.array([[sub.subplots() for sub in row] for row in subs])
    return fig, subs, axes


def _legend_below(holder, axes, wrap: int = LEGEND_WRAP) -> int:
    """One legend for the lines of ``axes`` (each label once), under ``holder`` (a figure or subfigure), its
    labels wrapped at ``wrap`` characters. Returns its number of text lines (0: nothing to show)."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries:
        return 0
    labels = [textwrap.fill(label, wrap, subsequent_indent="    ") for label in entries]
    holder.legend(list(entries.values()), labels, loc="outside lower center", fontsize=LEGEND_FONTSIZE,
                  frameon=False)
    return sum(label.count("\n") + 1 for label in labels)


def _grow(fig, legend_lines: int) -> None:
    """Make room for ``legend_lines`` lines of legend (the panels keep their height)."""
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + legend_lines * LEGEND_LINE_IN)


def accuracy_figure(curves: Curves):
    """Greedy test accuracy per epoch: one panel per (model, dataset, CoT), one line per method (mean ± std
    over seeds). A method whose records carry no per-epoch accuracy is listed as such. None if no records."""
    panels = _panels(curves.cells)
    if not panels:
        return None
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig, subs, axes = _figure(nrows, ncols)
    colors = _method_colors(curves.cells["method"])
    from matplotlib.ticker import MaxNLocator

    lines = [[0] * ncols for _ in range(nrows)]
    for i, (subfig, ax, panel) in enumerate(zip(subs.flat, axes.flat, panels)):
        methods = _order(_select(curves.cells, panel)["method"], METHOD_ORDER)
        for method in methods:
            drawn = _mean_band(ax, _select(curves.epochs, panel, method), "epoch", "test_accuracy", 100.0, 1,
                               colors[method], _label(curves, panel, method))
            if not drawn:
                ax.plot([], [], color=colors[method], linestyle=":", label=f"{method}: no per-epoch data")
        ax.set_title(f"{panel[0]} / {panel[1]} / {panel[2].upper()}-CoT", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("greedy test accuracy (%)")
        ax.grid(alpha=0.3)
        lines[i // ncols][i % ncols] = _legend_below(subfig, [ax])
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    _grow(fig, sum(max(row) for row in lines))
    return fig


def step_figure(curves: Curves, panel: tuple[str, str, str], smooth: int = 1):
    """Per-step RL curves of one (model, dataset, CoT): reward, fraction correct, KL and response length (mean ±
    std over seeds, one line per method that wrote a steps file). Steps files that cannot be read are named."""
    steps = _select(curves.steps, panel)
    missing = _select(curves.missing, panel)
    metrics = list(STEP_METRICS)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PANEL_IN[0] * len(metrics), PANEL_IN[1]), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)
    methods = _order(list(steps["method"]) + list(missing["method"]), METHOD_ORDER)
    colors = _method_colors(curves.cells["method"])
    from matplotlib.ticker import MaxNLocator

    for ax, metric in zip(axes.flat, metrics):
        drawn_any = False
        for method in methods:
            sub = _select(steps, panel, method)
            if metric in sub.columns and _mean_band(ax, sub, "step", metric, 1.0, smooth, colors[method],
                                                    _label(curves, panel, method)):
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
    # one legend for the four panels (the same methods), as wide as the figure
    _grow(fig, _legend_below(fig, axes.flat, wrap=LEGEND_WRAP * len(metrics)))
    title = f"{panel[0]} / {panel[1]} / {panel[2].upper()}-CoT: RL training curves"
    if not missing.empty:
        lost = "; ".join(f"{r.method} seed {r.seed}: {r.reason} ({r.steps_file})"
                         for r in missing.itertuples())
        title += "\n" + textwrap.fill(f"missing steps data -- {lost}", LEGEND_WRAP * len(metrics))
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

    fig, subs, axes = _figure(1, len(panels))
    colors = _method_colors(list(curves.cells["method"]) + list(curves.votes["method"]))
    lines = []
    for subfig, ax, panel in zip(subs.flat, axes.flat, panels):
        sub = _select(curves.votes, panel)
        for method in _order(sub["method"], METHOD_ORDER):
            mean = sub[sub["method"] == method].groupby("k")[["vote_accuracy", "greedy_accuracy"]].mean()
            ax.plot(mean.index, 100 * mean["vote_accuracy"], marker="o", color=colors[method],
                    label=f"{_label(curves, panel, method)}: vote")
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
        lines.append(_legend_below(subfig, [ax]))
    _grow(fig, max(lines))
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
