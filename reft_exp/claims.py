"""The claims report: which of the paper's qualitative findings hold at our scale, from the results records.

``python -m reft_exp.claims [--runs results/claims_runs] [--out results] [--tag ""]`` (the ``BuildClaims``
callback of ``experiment=claims`` runs it at the end of the sweep) writes ``claims.md`` and ``claims.csv``:
one row per claim with our mean +- std over seeds (each seed's value too), the paper's number and a verdict:

* ``holds``: our mean difference is above zero by more than ``std_margin`` standard deviations over seeds
  (one seed: above zero);
* ``does not hold``: it is not;
* ``missing``: no seed has the records the claim needs (which cells are named in the row).

Every claim is a *difference* within one seed (e.g. ReFT's greedy accuracy minus SFT's), so the seed-to-seed
spread of the shared SFT run cancels. Accuracies are the cells' reported numbers (greedy: the best epoch's,
selected on the test split as the official code does; docs/fidelity.md). The records of the sweep are those
whose tag is ``--tag`` (the main cells) or ``<tag>-<variant>``; with ``--tag ""`` (the claims sweep's own runs
folder) every tagged record is a variant, e.g. ``kl0``: ReFT with beta 0 (conf/cell/reft_kl0_greedy.yaml).

The paper's numbers come from reft_exp/paper/*.csv (arXiv v1 Tables 2/4/5, which have every method): the mean
difference over the cells that have both sides, its range, and the CodeLlama GSM8K P-CoT cell. Claims (6) and
(7) are statements of the paper's text without a number in those tables ("qualitative").
"""

from __future__ import annotations

import argparse
import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from reft_exp.tables import _iter_records, _tag, load_paper
from reft_exp.tables import budget as tables_budget

HOLDS, NOT_HOLDS, MISSING = "holds", "does not hold", "missing"
# Defaults of the verdict rule and the KL bound of claim (7); conf/experiment/claims.yaml passes its own.
STD_MARGIN = 1.0  # holds if mean - STD_MARGIN * std > 0 over seeds
KL_BOUND = 2.0    # nats: the largest per-epoch mean sequence KL to the reference that counts as "bounded"
PAPER_SOURCE = "v1"  # the paper version whose tables have every method (arXiv v1)
PAPER_EXAMPLE = ("codellama-7b", "gsm8k", "p")
CSV_COLUMNS = ["id", "claim", "unit", "mean", "std", "seeds", "per_seed", "paper", "verdict", "cells"]


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    cells: str  # the records it needs, as method/inference[/variant] (shown when missing)
    unit: str
    value: Callable[[dict], float | None]  # one seed's cells -> our number (None: a record is missing)
    paper: Callable[[], str]
    extra_check: Callable[[list[dict]], tuple[bool, str]] | None = None  # (ok, why) beyond mean > 0


# ---------------------------------------------------------------- one seed's numbers

def _acc(cells: dict, method: str, inference: str = "greedy", variant: str = "") -> float | None:
    rec = cells.get((method, inference, variant))
    return None if rec is None else 100.0 * float(rec["accuracy"])


def _acc_with_header(cells: dict, method: str) -> float | None:
    """The method's greedy cell evaluated with the P-CoT header in the prompt (``inference.header_check``)."""
    rec = cells.get((method, "greedy", ""))
    value = None if rec is None else (rec.get("inference") or {}).get("accuracy_with_header")
    return None if value is None else 100.0 * float(value)


def _minus_sft_with_header(a: tuple) -> Callable[[dict], float | None]:
    """``a``'s accuracy minus SFT's greedy accuracy with the program header in the prompt: one prompt for both."""
    def value(cells: dict) -> float | None:
        x, y = _acc(cells, *a), _acc_with_header(cells, "sft")
        return None if x is None or y is None else x - y
    return value


def _diff(a: tuple, b: tuple) -> Callable[[dict], float | None]:
    def value(cells: dict) -> float | None:
        x, y = _acc(cells, *a), _acc(cells, *b)
        return None if x is None or y is None else x - y
    return value


def _rl_epochs(cells: dict, variant: str = "") -> list[dict] | None:
    rec = cells.get(("reft", "greedy", variant))
    if rec is None:
        return None
    return [e for e in rec.get("epochs", []) if e.get("epoch", 0) >= 1 and "kl" in e]


def _final_kl(variant: str) -> Callable[[dict], float | None]:
    def value(cells: dict) -> float | None:
        epochs = _rl_epochs(cells, variant)
        return float(epochs[-1]["kl"]) if epochs else None
    return value


def _kl0_minus_default(cells: dict) -> float | None:
    a, b = _final_kl("kl0")(cells), _final_kl("")(cells)
    return None if a is None or b is None else a - b


def _reward_rise(cells: dict) -> float | None:
    epochs = _rl_epochs(cells)
    if not epochs or len(epochs) < 2:
        return None
    return float(epochs[-1]["score"]) - float(epochs[0]["score"])


def _kl_bounded(bound: float) -> Callable[[list[dict]], tuple[bool, str]]:
    def check(seeds: list[dict]) -> tuple[bool, str]:
        kls = [float(e["kl"]) for cells in seeds for e in (_rl_epochs(cells) or [])]
        if not kls:
            return False, "no ReFT epochs with a KL"
        return max(kls) <= bound, f"max epoch KL {max(kls):.2f} (bound {bound:g})"
    return check


def _reft_rerank_margin(cells: dict) -> float | None:
    best = _acc(cells, "reft", "rerank")
    others = [100.0 * float(r["accuracy"]) for (m, inf, var), r in cells.items()
              if not var and (m, inf) != ("reft", "rerank")]
    return None if best is None or not others else best - max(others)


# ---------------------------------------------------------------- the paper's numbers

@functools.cache
def _paper_cells() -> pd.DataFrame:
    """(model, dataset, cot) x (method, inference) -> accuracy from the paper's tables (source v1)."""
    value = load_paper("value_accuracy")
    vote = load_paper("voting_rerank")
    df = pd.concat([value, vote], ignore_index=True)
    df = df[df["source"] == PAPER_SOURCE].assign(cot=lambda d: d["cot"].astype(str))
    return df.pivot_table(index=["model", "dataset", "cot"], columns=["method", "inference"], values="accuracy")


def _describe(diffs: pd.Series) -> str:
    diffs = diffs.dropna()
    if diffs.empty:
        return "—"
    text = f"{diffs.mean():+.1f} mean over {len(diffs)} cells ({diffs.min():+.1f} to {diffs.max():+.1f})"
    if PAPER_EXAMPLE in diffs.index:
        text += f"; CodeLlama GSM8K P-CoT {diffs.loc[PAPER_EXAMPLE]:+.1f}"
    return text


def _paper_diff(a: tuple[str, str], b: tuple[str, str]) -> Callable[[], str]:
    def paper() -> str:
        cells = _paper_cells()
        if a not in cells.columns or b not in cells.columns:
            return "—"
        return _describe(cells[a] - cells[b])
    return paper


def _paper_reft_rerank_margin() -> str:
    cells = _paper_cells()
    best = ("reft", "rerank")
    if best not in cells.columns:
        return "—"
    rows = cells[cells[best].notna()]
    return _describe(rows[best] - rows.drop(columns=[best]).max(axis=1))


def _qualitative() -> str:
    return "qualitative (no number in the paper's tables)"


def claims(kl_bound: float = KL_BOUND) -> list[Claim]:
    pts = "points"
    return [
        Claim("1", "ReFT beats SFT (greedy, best epoch vs best epoch, the official prompts: RL evaluated with the "
              "program header in the prompt, SFT from the question alone)", "reft/greedy, sft/greedy", pts,
              _diff(("reft",), ("sft",)), _paper_diff(("reft", "greedy"), ("sft", "greedy"))),
        Claim("1b", "ReFT beats SFT under one prompt (SFT's best checkpoint also evaluated with the program header "
              "in the prompt, as ReFT is: inference.header_check)", "reft/greedy, sft/greedy (accuracy_with_header)",
              pts, _minus_sft_with_header(("reft",)), _paper_diff(("reft", "greedy"), ("sft", "greedy"))),
        Claim("2a", "ReFT beats offline self-training (greedy)", "reft/greedy, offline_st/greedy", pts,
              _diff(("reft",), ("offline_st",)), _paper_diff(("reft", "greedy"), ("offline_st", "greedy"))),
        Claim("2b", "ReFT beats online self-training (greedy)", "reft/greedy, online_st/greedy", pts,
              _diff(("reft",), ("online_st",)), _paper_diff(("reft", "greedy"), ("online_st", "greedy"))),
        Claim("3a", "Majority voting beats greedy (SFT)", "sft/majority_vote, sft/greedy", pts,
              _diff(("sft", "majority_vote"), ("sft",)), _paper_diff(("sft", "majority_vote"), ("sft", "greedy"))),
        Claim("3b", "Majority voting beats greedy (ReFT)", "reft/majority_vote, reft/greedy", pts,
              _diff(("reft", "majority_vote"), ("reft",)),
              _paper_diff(("reft", "majority_vote"), ("reft", "greedy"))),
        Claim("3c", "Majority voting beats greedy (SFT) under one prompt (greedy with the program header in the "
              "prompt, as the samples have it)", "sft/majority_vote, sft/greedy (accuracy_with_header)", pts,
              _minus_sft_with_header(("sft", "majority_vote")),
              _paper_diff(("sft", "majority_vote"), ("sft", "greedy"))),
        Claim("4a", "Reranking beats voting (SFT)", "sft/rerank, sft/majority_vote", pts,
              _diff(("sft", "rerank"), ("sft", "majority_vote")),
              _paper_diff(("sft", "rerank"), ("sft", "majority_vote"))),
        Claim("4b", "Reranking beats voting (ReFT)", "reft/rerank, reft/majority_vote", pts,
              _diff(("reft", "rerank"), ("reft", "majority_vote")),
              _paper_diff(("reft", "rerank"), ("reft", "majority_vote"))),
        Claim("5", "ReFT + reranking is the best cell (margin over the best other cell)", "reft/rerank + others",
              pts, _reft_rerank_margin, _paper_reft_rerank_margin),
        Claim("6", "Without the KL term (beta 0) the policy drifts further from the reference (final-epoch KL, "
              "beta 0 minus default)", "reft/greedy, reft/greedy/kl0", "nats", _kl0_minus_default, _qualitative),
        Claim("7", "ReFT raises the training reward (last epoch minus first) while its KL stays bounded",
              "reft/greedy (2+ epochs)", "reward", _reward_rise, _qualitative, _kl_bounded(kl_bound)),
    ]


# ---------------------------------------------------------------- the report

def _variant(rec_tag: str, tag: str) -> str | None:
    """The variant a record's tag names within the sweep ``tag`` ("" = a main cell), None if not of the sweep:
    with ``tag`` "" every other tag is a variant (a results folder of its own), else ``<tag>-<variant>``."""
    if rec_tag == tag:
        return ""
    if not tag:
        return rec_tag
    return rec_tag[len(tag) + 1:] if rec_tag.startswith(f"{tag}-") else None


def _by_seed(runs_dir: str | Path, tag: str) -> dict[object, dict]:
    """seed -> {(method, inference, variant): record} for the records of the sweep ``tag``."""
    seeds: dict[object, dict] = {}
    for _path, rec in _iter_records(runs_dir, None):
        variant = _variant(_tag(rec), tag)
        if variant is None:
            continue
        c = rec["coordinates"]
        seeds.setdefault(c.get("seed"), {})[(str(c["method"]), str(c["inference"]), variant)] = rec
    return seeds


def verdict(values: Sequence[float], std_margin: float = STD_MARGIN) -> str:
    if not values:
        return MISSING
    mean = sum(values) / len(values)
    std = _std(values)
    return HOLDS if mean - std_margin * std > 0 else NOT_HOLDS


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def build_claims(seeds: dict[object, dict], kl_bound: float = KL_BOUND, std_margin: float = STD_MARGIN
                 ) -> pd.DataFrame:
    """One row per claim (numbers, not formatted): CSV_COLUMNS."""
    rows = []
    ordered = sorted(seeds, key=str)
    for claim in claims(kl_bound):
        per_seed = {s: claim.value(seeds[s]) for s in ordered}
        values = [v for v in per_seed.values() if v is not None]
        verdict_ = verdict(values, std_margin)
        note = ""
        if claim.extra_check is not None and values:
            ok, note = claim.extra_check([seeds[s] for s in ordered])
            if not ok:
                verdict_ = NOT_HOLDS
        rows.append({"id": claim.id, "claim": claim.text + (f" [{note}]" if note else ""), "unit": claim.unit,
                     "mean": sum(values) / len(values) if values else math.nan,
                     "std": _std(values) if len(values) > 1 else math.nan, "seeds": len(values),
                     "per_seed": "; ".join(f"{s}: {v:+.2f}" for s, v in per_seed.items() if v is not None),
                     "paper": claim.paper(), "verdict": verdict_, "cells": claim.cells})
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


def vote_curve(seeds: dict[object, dict]) -> pd.DataFrame:
    """Majority-vote accuracy (percent) against K: rows (method, K), mean and std over seeds, plus greedy."""
    rows = []
    for s, cells in seeds.items():
        for (method, inference, variant), rec in cells.items():
            if inference != "majority_vote" or variant:
                continue
            inf = rec.get("inference") or {}
            for k, acc in (inf.get("vote_accuracy_by_k") or {}).items():
                rows.append({"method": method, "K": int(k), "seed": s, "accuracy": 100.0 * float(acc)})
    if not rows:
        return pd.DataFrame(columns=["method", "K", "mean", "std", "seeds"])
    df = pd.DataFrame(rows).groupby(["method", "K"])["accuracy"].agg(["mean", "std", "count"])
    return df.rename(columns={"count": "seeds"}).reset_index()


def budget(seeds: dict[object, dict]) -> str:
    """One line: the first seed's SFT and ReFT budgets (:func:`reft_exp.tables.budget`) and the vote's K."""
    if not seeds:
        return ""
    cells = seeds[min(seeds, key=str)]
    parts = [f"{name}: {tables_budget(cells[key])}" for name, key in (("SFT", ("sft", "greedy", "")),
                                                                      ("ReFT", ("reft", "greedy", ""))) if key in cells]
    if vote := cells.get(("sft", "majority_vote", "")):
        parts.append(f"K = {(vote.get('inference') or {}).get('num_samples')} samples per test question")
    return "; ".join(parts)


def warmups(seeds: dict[object, dict]) -> str:
    """One line: the SFT epoch each seed's ReFT started from, and its training samples' accuracy where a rule
    picked it (``sft.warmup_checkpoint``); "" when no ReFT record carries its warm-up."""
    parts = []
    for s in sorted(seeds, key=str):
        w = (seeds[s].get(("reft", "greedy", "")) or {}).get("warmup") or {}
        if w.get("epoch") is None:
            continue
        acc = (w.get("train_sample_accuracy") or {}).get(str(w["epoch"]))
        parts.append(f"{s}: epoch {w['epoch']}" + (f" ({100 * acc:.1f}% of training samples right)" if acc is not None else ""))
    return ", ".join(parts)


def _fmt(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.2f}"


def write_report(seeds: dict[object, dict], out_dir: str | Path, kl_bound: float = KL_BOUND,
                 std_margin: float = STD_MARGIN) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = build_claims(seeds, kl_bound, std_margin)
    table.to_csv(out / "claims.csv", index=False)
    shown = pd.DataFrame({
        "claim": table["id"] + ". " + table["claim"],
        "ours (mean ± std)": [f"{_fmt(m)} ± {s:.2f} {u}" if not math.isnan(s) else f"{_fmt(m)} {u}"
                              for m, s, u in zip(table["mean"], table["std"], table["unit"])],
        "seeds": table["per_seed"].where(table["seeds"] > 0, "—"),
        "paper": table["paper"], "verdict": table["verdict"]})
    curve = vote_curve(seeds)
    lines = ["# Claims report", "",
             f"Which of the paper's findings hold here: {len(seeds)} seed(s) ({', '.join(map(str, sorted(seeds, key=str)))}). "
             f"Verdict: holds if mean - {std_margin:g} x std > 0 over seeds; claim 7 also needs every ReFT epoch's "
             f"KL <= {kl_bound:g} nats.", ""]
    if b := budget(seeds):
        lines += [f"Budget: {b}.", ""]
    if w := warmups(seeds):
        lines += [f"ReFT's warm-up per seed: {w}.", ""]
    lines += [shown.to_markdown(index=False), ""]
    if not curve.empty:
        lines += ["## Majority-vote accuracy against K (percent, mean over seeds)", "",
                  curve.pivot(index="K", columns="method", values="mean").round(1).to_markdown(), ""]
    (out / "claims.md").write_text("\n".join(lines))
    return [out / "claims.md", out / "claims.csv"]


def main(argv: Sequence[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(prog="python -m reft_exp.claims", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="results/claims_runs", help="folder of results records")
    ap.add_argument("--out", default="results", help="where claims.md and claims.csv go")
    ap.add_argument("--tag", default="", help="the sweep's tag (variants: <tag>-<variant>; any tag when \"\")")
    ap.add_argument("--kl-bound", type=float, default=KL_BOUND)
    ap.add_argument("--std-margin", type=float, default=STD_MARGIN)
    args = ap.parse_args(argv)
    seeds = _by_seed(args.runs, args.tag)
    if not seeds:
        warnings.warn(f"no records of the sweep (tag {args.tag!r}) under {args.runs}: every claim is missing",
                      stacklevel=2)
    paths = write_report(seeds, args.out, args.kl_bound, args.std_margin)
    print("\n".join(map(str, paths)))
    return paths


if __name__ == "__main__":
    main()
