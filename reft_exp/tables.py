"""Paper tables from the results records: ours beside the paper's numbers.

``python -m reft_exp.tables [--runs results/runs] [--out results/tables] [--plots results/plots] [--wandb]``

* Table 1 -- value accuracy with greedy decoding: rows (model, method), columns (dataset, CoT) plus an
  "Average" column (Table 2 of the paper).
* Table 2 -- majority voting and reward-model reranking: rows (model, method), columns
  (inference, dataset, CoT) from the records whose inference is not greedy (Table 4 / Table 5 of the paper).

The tables are numeric frames (:func:`build_table1`, :func:`build_table2`: percent, NaN where there is no
number; fields ``ours``, ``std``, ``seeds``, ``paper``, ``Δ`` per cell) and are formatted only when written
(:func:`format_table`): each cell then shows ``ours`` (one decimal; ``mean ± std`` when several seeds), ``paper``
and ``Δ`` (ours - paper). A cell with no number is "—"; nothing is ever filled in. A record may carry a note
(:func:`record_note`); the notes of a row's records become a last ``note`` column.

The paper's numbers live in ``reft_exp/paper/`` (copied verbatim from the project's reference data):

* ``paper_value_accuracy.csv`` (source, model, method, dataset, cot, accuracy): source ``v1`` is
  arXiv:2401.08967v1 (Luong et al., 2024), Table 2, which also has the MathQA-numeric rows;
  source ``acl`` is the ACL 2024 version, Table 2 (SFT and ReFT rows only).
* ``paper_voting_rerank.csv`` (source, model, method, inference, dataset, cot, accuracy): source ``v1``
  is arXiv v1 Tables 4/5 (GSM8K majority voting and reranking); source ``readme`` is the numbers
  in the README of the authors' repository (github.com/lqtrung1998/mwp_ReFT).

The preferred source is used where it has the cell, the other source(s) otherwise.

Written with pandas' writers (Markdown through ``tabulate``, CSV, LaTeX). The plots (:mod:`reft_exp.plots`) go
to ``--plots`` (default ``plots/`` beside ``--out``). ``--wandb`` also logs the tables as ``wandb.Table`` s and
the plots as images to one W&B run.
"""

from __future__ import annotations

import argparse
import io
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import pandas as pd

from reft_exp.results import read_record

MISSING = "—"
FIELDS = ("ours", "paper", "Δ")  # what each cell of a written table shows
NOTE = "note"  # the written tables' last column when some record carries a note (record_note)
MODEL_ORDER = ("galactica-6.7b", "codellama-7b")
METHOD_ORDER = ("sft", "offline_st", "online_st", "reft", "grpo", "rloo")  # grpo, rloo: no paper numbers
DATASET_ORDER = ("gsm8k", "svamp", "mathqa", "mathqa_numeric")
COT_ORDER = ("n", "p")
INFERENCE_ORDER = ("majority_vote", "rerank")
PAPER_FILES = {"value_accuracy": "paper_value_accuracy.csv", "voting_rerank": "paper_voting_rerank.csv"}
RECORD_COLUMNS = ["cell_id", "model", "dataset", "cot", "method", "inference", "seed", "tag", "accuracy", "note",
                  "path"]
CELL_KEYS = ["model", "dataset", "cot", "method", "inference"]
CELL_KEYS_PAPER = ["model", "method", "inference", "dataset", "cot"]


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


RL_METHODS = ("reft", "online_st", "grpo", "rloo")


def budget(rec: dict) -> str:
    """A record's training and inference budget in a few words, e.g. ``SFT 4 epochs, best 4/4 (no plateau
    reached)``, ``warm-up SFT epoch 2/4 + 4 x 320 questions, best epoch 3`` or ``... K=10``: the tables' note
    column and the plots' legends carry it. "" when the record holds no config (constructed records)."""
    cfg, c = rec.get("config") or {}, _coords(rec)
    sft, m = cfg.get("sft") or {}, cfg.get("method") or {}
    if not sft:
        return ""
    parts, best = [], rec.get("best_epoch")
    epochs = [e for e in rec.get("epochs") or [] if e.get("epoch", 0) >= 1 and "test_accuracy" in e]
    if c["method"] == "sft":
        last = sft.get("train_epochs") or sft.get("epochs")
        text = f"SFT {last} epochs" + (f" of a {sft['epochs']}-epoch schedule" if last != sft.get("epochs") else "")
        if best is not None:
            rising = best == last and len(epochs) > 1 and epochs[-1]["test_accuracy"] > epochs[-2]["test_accuracy"]
            text += f", best {best}/{last}" + (" (no plateau reached)" if rising else "")
        parts.append(text)
    elif c["method"] == "offline_st":
        parts.append(f"{m.get('epochs')} epochs on SFT data + warm-up samples" + (f", best epoch {best}"
                                                                                if best is not None else ""))
    elif c["method"] in RL_METHODS:
        warm = (rec.get("warmup") or {}).get("epoch")  # the epoch the cell started from (a rule may pick it)
        if warm is None:  # records written before the warm-up was recorded: the configured epoch
            warm = (cfg.get("dataset") or {}).get("warmup_epoch")
            warm = warm.get(c["cot"]) if isinstance(warm, dict) else warm
        chosen = rec.get("warmup") or {}
        rule = (f" (the first with >= {100 * chosen['min_sample_accuracy']:g}% of training samples right)"
                if chosen.get("rule", "fixed") != "fixed" else "")
        parts.append(f"warm-up SFT epoch {warm}/{sft.get('epochs')}{rule} + {m.get('epochs')} x "
                     f"{m.get('max_questions')} questions" + (f", best epoch {best}" if best is not None else ""))
    k = (rec.get("inference") or {}).get("num_samples")
    if k and c["inference"] != "greedy":
        parts.append(f"K={k}")
    return ", ".join(parts)


def record_note(rec: dict) -> str:
    """A note on how a record's number was produced, shown in the tables' ``note`` column: its budget
    (:func:`budget`), which reranker protocol produced a rerank number (the official one selects the reranker
    on the test set, an optimistic number; ``inference.reranker.selection``), and any free ``note`` a record
    carries, and the greedy accuracy of a method evaluated from the question alone when the same checkpoint has
    the P-CoT program header in the prompt (``inference.header_check``). A vote's and a rerank's number get
    their reference points from the same samples: one sample right and any of the K right (the vote's ceiling),
    and a uniform pick among the unique candidates (a reranker that knows nothing)."""
    notes = [str(rec["note"])] if rec.get("note") else []
    if b := budget(rec):
        notes.append(b)
    inf = rec.get("inference") or {}
    if inf.get("name") == "majority_vote" and None not in (inf.get("sample_accuracy"), inf.get("upper_bound")):
        notes.append(f"vote: one sample right {100 * float(inf['sample_accuracy']):.1f}%, any of the K "
                     f"{100 * float(inf['upper_bound']):.1f}%")
    if inf.get("name") == "rerank":
        if inf.get("selection"):
            notes.append("rerank: reranker selected on the test set (best_on_test, as the official code)"
                         if inf.get("selected_on_test") else f"rerank: {inf['selection']} reranker")
        if inf.get("uniform_pick_accuracy") is not None:  # a reranker that knows nothing
            notes.append(f"a uniform pick among the candidates {100 * float(inf['uniform_pick_accuracy']):.1f}%")
    if inf.get("accuracy_with_header") is not None:  # inference.header_check (P-CoT, SFT-recipe methods)
        notes.append(f"{100 * float(inf['accuracy_with_header']):.1f} with the program header in the prompt "
                     "(as the RL methods and the samples)")
    return "; ".join(notes)


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
             "note": record_note(rec), "path": str(path)} for path, rec in _iter_records(runs_dir, tag)]
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


# ---------------------------------------------------------------- building (numbers)

def _order(values, preferred: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(values))
    return [v for v in preferred if v in present] + sorted(v for v in present if v not in preferred)


def _paper_lookup(paper_df: pd.DataFrame | None, source: str) -> pd.Series:
    """(model, method, inference, dataset, cot) -> paper accuracy, from ``source`` where it has the cell, else
    from the other sources."""
    if paper_df is None or paper_df.empty:
        return pd.Series(dtype=float, index=pd.MultiIndex.from_tuples([], names=CELL_KEYS_PAPER))
    df = paper_df.assign(cot=paper_df["cot"].astype(str), preferred=paper_df["source"] != source)
    df = df.sort_values("preferred", kind="stable").drop_duplicates(CELL_KEYS_PAPER)  # preferred source first
    return df.set_index(CELL_KEYS_PAPER)["accuracy"].astype(float)


def _cell_label(dataset: str, cot: str, inference: str | None = None) -> str:
    label = f"{dataset} {cot.upper()}-CoT"
    return f"{inference} {label}" if inference else label


def _build(records: pd.DataFrame, paper: pd.Series, cells: list[tuple[str, str, str]], with_average: bool,
           label_inference: bool) -> pd.DataFrame:
    """The numeric table: rows (model, method); columns (cell label, field), percent, NaN where no number."""
    stats = (records.assign(acc=records["accuracy"] * 100.0)
             .groupby(["model", "method", "inference", "dataset", "cot"])["acc"].agg(["mean", "std", "count"]))
    models = _order(records["model"], MODEL_ORDER)
    rows = pd.MultiIndex.from_tuples([(m, meth) for m in models for meth in _order(
        records.loc[records["model"] == m, "method"], METHOD_ORDER)], names=["model", "method"])
    parts = {}
    for inf, ds, cot in cells:
        keys = [(m, meth, inf, ds, cot) for m, meth in rows]
        cell = stats.reindex(keys).set_axis(rows)
        ours, p = cell["mean"], paper.reindex(keys).set_axis(rows)
        parts[_cell_label(ds, cot, inf if label_inference else None)] = pd.DataFrame(
            {"ours": ours, "std": cell["std"].where(cell["count"] > 1), "seeds": cell["count"], "paper": p,
             "Δ": ours - p})
    table = pd.concat(parts, axis=1)
    if with_average:
        ours = table.xs("ours", axis=1, level=1)
        paper_same = table.xs("paper", axis=1, level=1).where(ours.notna())
        avg = ours.mean(axis=1)
        # The paper's average only over the same cells as ours, and only when it has all of them.
        complete = paper_same.notna().sum(axis=1) == ours.notna().sum(axis=1)
        pavg = paper_same.mean(axis=1).where(complete & ours.notna().any(axis=1))
        table[("Average", "ours")], table[("Average", "paper")] = avg, pavg
        table[("Average", "Δ")] = avg - pavg
    # a row's notes: each distinct part once, in the order met (a vote and a rerank record share their budget)
    notes = records.groupby(["model", "method"])["note"].agg(
        lambda v: "; ".join(dict.fromkeys(part for n in v if n for part in n.split("; "))))
    if "note" in records and notes.reindex(rows).fillna("").any():
        table[(NOTE, "")] = notes.reindex(rows).fillna("")
    return table


def build_table1(records_df: pd.DataFrame, paper_df: pd.DataFrame | None = None,
                 paper_source: str = "acl") -> pd.DataFrame:
    """Value accuracy (greedy), numeric. Rows (model, method); columns (cell label, field) and "Average"."""
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
    """Voting / reranking, numeric: rows (model, method); columns (inference dataset CoT, field); no average."""
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


# ---------------------------------------------------------------- formatting (only when written or shown)

def _fmt(x: float, digits: int, sign: bool = False) -> str:
    if pd.isna(x):
        return MISSING
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """The numeric table as text: per cell ``ours`` ("61.0 ± 1.4" over several seeds), ``paper`` and ``Δ``
    ("—" where there is no number), then the ``note`` column if any."""
    if table.empty:
        return pd.DataFrame()
    out = {}
    for label in dict.fromkeys(label for label, _ in table.columns):
        if label == NOTE:
            out[(NOTE, "")] = table[(NOTE, "")]
            continue
        cell = table[label]
        std = cell["std"] if "std" in cell else pd.Series(float("nan"), index=table.index)
        out[(label, "ours")] = [_fmt(m, 1) + ("" if pd.isna(s) else f" ± {s:.1f}")
                                for m, s in zip(cell["ours"], std)]
        out[(label, "paper")] = [_fmt(p, 2) for p in cell["paper"]]
        out[(label, "Δ")] = [_fmt(d, 2, sign=True) for d in cell["Δ"]]
    return pd.DataFrame(out, index=table.index)


# ---------------------------------------------------------------- comparing two sweeps



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


# ---------------------------------------------------------------- writing

def _flat(text: pd.DataFrame) -> pd.DataFrame:
    """A formatted table with one header row: ``model``, ``method``, ``<cell label> <field>``, ..."""
    flat = text.copy()
    flat.columns = [f"{label} {f}".strip() for label, f in text.columns]
    return flat.reset_index()


def to_markdown(table: pd.DataFrame, title: str) -> str:
    flat = _flat(format_table(table))
    align = ["left" if i < 2 or name == NOTE else "right" for i, name in enumerate(flat.columns)]  # text left
    return f"# {title}\n\n" + flat.to_markdown(index=False, colalign=align, disable_numparse=True) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    return _flat(format_table(table)).to_csv(index=False, lineterminator="\n")


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("Δ", r"$\Delta$"), (MISSING, "--")):
        s = s.replace(a, b)
    return s


def to_latex(table: pd.DataFrame, caption: str) -> str:
    text = format_table(table)
    text = text.rename(index=_tex, columns=_tex).map(lambda v: _tex(str(v)))
    text.index.names = ["Model", "Method"]
    return text.to_latex(escape=False, caption=_tex(caption), position="t", multicolumn_format="c", multirow=False,
                         column_format="ll" + "r" * text.shape[1])


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
            flat = _flat(format_table(table))
            payload[key] = wandb.Table(columns=list(flat.columns), data=flat.to_numpy().tolist())
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
        from reft_exp.plots import load_curves, write_plots

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
