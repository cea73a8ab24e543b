"""Plots from constructed results records: accuracy per epoch and RL step curves (mean ± std over seeds),
missing data shown as missing, the CLI writes them beside the tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from reft_exp import plots, tables
from reft_exp.results import write_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _record(model, dataset, cot, method, seed, accs, inference="greedy", steps_file=None, by_k=None):
    """A complete record; ``accs`` maps epoch -> greedy test accuracy (None = epoch not evaluated)."""
    cid = f"{model}__{dataset}__{cot}__{method}__{inference}__seed{seed}"
    epochs = [{"epoch": e, "step": 10 * e} | ({} if a is None else {"test_accuracy": a})
              for e, a in accs.items()]
    best = max(a for a in accs.values() if a is not None)
    return {
        "record_version": 1, "cell_id": cid, "config_hash": "0" * 12, "status": "complete",
        "coordinates": {"model": model, "dataset": dataset, "cot": cot, "method": method,
                        "inference": inference, "seed": seed},
        "accuracy": best, "best_accuracy": best, "final_accuracy": best, "epochs": epochs,
        "method": {} if steps_file is None else {"steps_file": str(steps_file)},
        "inference": {} if by_k is None else {"vote_accuracy_by_k": by_k, "greedy_accuracy": best},
        "config": {"tag": ""},
    }


def _steps(path, score, kl, n=6):
    """A steps.jsonl of ``n`` PPO steps; score/kl are functions of the step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": 1 + (s - 1) // 3, "step": s, "score": score(s), "correct": score(s) / 2, "kl": kl(s)}
            for s in range(1, n + 1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def runs(tmp_path):
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    cache = tmp_path / "results" / "cache"
    recs = [
        _record("tiny", "arith", "n", "sft", 1, {1: 0.10, 2: 0.30, 3: 0.50}),
        _record("tiny", "arith", "n", "sft", 2, {1: 0.20, 2: 0.40, 3: 0.70}),
        # same training run as sft seed 1, other inference: its curve must not be counted twice
        _record("tiny", "arith", "n", "sft", 1, {1: 0.90, 2: 0.90, 3: 0.90}, inference="majority_vote",
                by_k={"1": 0.5, "4": 0.8, "16": 0.95}),
        # ReFT: epoch 1 not evaluated (eval_every_epochs > 1) -> no point there, nothing interpolated
        _record("tiny", "arith", "n", "reft", 1, {0: 0.40, 1: None, 2: 0.60},
                steps_file=_steps(cache / "r1" / "steps.jsonl", lambda s: 0.1 * s, lambda s: 0.01 * s)),
        _record("tiny", "arith", "n", "reft", 2, {0: 0.40, 1: None, 2: 0.80},
                steps_file=_steps(cache / "r2" / "steps.jsonl", lambda s: 0.1 * s + 0.2, lambda s: 0.03 * s)),
        _record("tiny", "arith", "n", "reft", 3, {0: 0.40, 2: 0.50},
                steps_file=cache / "gone" / "steps.jsonl"),
        _record("galactica-6.7b", "gsm8k", "p", "sft", 42, {1: 0.25}),
    ]
    for rec in recs:
        write_record(runs / f"{rec['cell_id']}.json", rec)
    return runs


def _line(ax, label_start):
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith(label_start)]
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def test_load_curves_one_entry_per_training_run(runs):
    curves = plots.load_curves(runs)
    assert len(curves.cells) == 6  # the majority_vote record shares sft seed 1's training
    sft1 = curves.epochs[(curves.epochs["method"] == "sft") & (curves.epochs["seed"] == 1)]
    assert list(sft1["test_accuracy"]) == [0.10, 0.30, 0.50]  # the greedy record's curve
    reft1 = curves.epochs[(curves.epochs["method"] == "reft") & (curves.epochs["seed"] == 1)]
    assert math.isnan(reft1.set_index("epoch").loc[1, "test_accuracy"])
    assert len(curves.steps) == 12 and set(curves.steps["seed"]) == {1, 2}
    assert curves.steps.set_index(["seed", "step"]).loc[(2, 4), "kl"] == pytest.approx(0.12)
    assert list(curves.missing["seed"]) == [3] and list(curves.missing["reason"]) == ["not found"]


def test_accuracy_figure_mean_and_std_over_seeds(runs):
    fig = plots.accuracy_figure(plots.load_curves(runs))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["galactica-6.7b / gsm8k / P-CoT", "tiny / arith / N-CoT"]
    tiny = axes[1]
    x, y = _line(tiny, "sft")
    assert list(x) == [1, 2, 3]
    assert y == pytest.approx([15.0, 35.0, 60.0])  # mean of the two seeds, percent
    x, y = _line(tiny, "reft")
    assert list(x) == [0, 2]  # epoch 1 has no accuracy in any seed: left out
    assert y == pytest.approx([40.0, 190.0 / 3])  # (60 + 80 + 50) / 3
    assert [ln.get_label() for ln in tiny.get_lines()] == ["sft (mean ± std, 2 seeds)",
                                                            "reft (mean ± std, 3 seeds)"]
    # the band spans mean ± sample std: at epoch 3, sft seeds 50 and 70 -> 60 ± 14.14
    band = [c for c in tiny.collections if len(c.get_paths())][0]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.max() == pytest.approx(60 + np.std([50, 70], ddof=1))
    assert ys.min() == pytest.approx(15 - np.std([10, 20], ddof=1))
    # one seed: a line without a band
    gal = axes[0]
    assert _line(gal, "sft")[1] == pytest.approx([25.0])
    assert not [c for c in gal.collections if len(c.get_paths())]


def test_step_figure_curves_and_missing_file(runs):
    curves = plots.load_curves(runs)
    fig = plots.step_figure(curves, ("tiny", "arith", "n"))
    score_ax, correct_ax, kl_ax, length_ax = fig.axes
    assert [ln.get_label() for ln in length_ax.get_lines()] == ["reft: response_length not recorded"]
    x, y = _line(score_ax, "reft")
    assert list(x) == [1, 2, 3, 4, 5, 6]
    assert y == pytest.approx([0.1 * s + 0.1 for s in range(1, 7)])  # mean of 0.1 s and 0.1 s + 0.2
    assert _line(kl_ax, "reft")[1] == pytest.approx([0.02 * s for s in range(1, 7)])
    assert _line(correct_ax, "reft")[1] == pytest.approx([(0.1 * s + 0.1) / 2 for s in range(1, 7)])
    title = fig._suptitle.get_text()
    assert "missing steps data" in title and "reft seed 3: not found" in title
    smoothed = plots.step_figure(curves, ("tiny", "arith", "n"), smooth=3)
    # moving average over 3 steps within each seed, then the mean over seeds:
    # step 3 -> (mean(0.1, 0.2, 0.3) + mean(0.3, 0.4, 0.5)) / 2 = 0.3; step 1 -> (0.1 + 0.3) / 2
    assert _line(smoothed.axes[0], "reft")[1][:3] == pytest.approx([0.2, 0.25, 0.3])


def test_write_plots_files(runs, tmp_path):
    paths = plots.write_plots(plots.load_curves(runs), tmp_path / "plots")
    assert [p.name for p in paths] == ["accuracy_per_epoch.png", "rl_curves__tiny__arith__n.png",
                                       "voting_by_k.png"]
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_only_missing_steps_still_plotted_as_missing(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    rec = _record("tiny", "arith", "p", "reft", 1, {0: 0.3, 1: 0.4}, steps_file=tmp_path / "nowhere.jsonl")
    write_record(runs / f"{rec['cell_id']}.json", rec)
    curves = plots.load_curves(runs)
    fig = plots.step_figure(curves, ("tiny", "arith", "p"))
    assert all(not ax.get_lines() for ax in fig.axes)  # no curve is drawn...
    assert "no score data" in [t.get_text() for t in fig.axes[0].texts]  # ...and it says so
    names = [p.name for p in plots.write_plots(curves, tmp_path / "plots")]
    assert names == ["accuracy_per_epoch.png", "rl_curves__tiny__arith__p.png"]


def test_cli_writes_plots_beside_tables(runs, tmp_path, capsys):
    out = tmp_path / "results" / "tables"
    paths = tables.main(["--runs", str(runs), "--out", str(out)])
    plots = sorted(p.name for p in (tmp_path / "results" / "plots").glob("*.png"))
    assert plots == ["accuracy_per_epoch.png", "rl_curves__tiny__arith__n.png", "voting_by_k.png"]
    assert len(paths) == 6 + 3
    assert str(tmp_path / "results" / "plots" / "accuracy_per_epoch.png") in capsys.readouterr().out
    tables.main(["--runs", str(runs), "--out", str(tmp_path / "t2"), "--plots", str(tmp_path / "p2")])
    assert len(list((tmp_path / "p2").glob("*.png"))) == 3
    assert len(tables.main(["--runs", str(runs), "--out", str(tmp_path / "t3"), "--no-plots"])) == 6
    assert not (tmp_path / "plots").exists()
    (tmp_path / "empty").mkdir()
    assert len(tables.main(["--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "t4")])) == 6
    assert not list(tmp_path.glob("plots/*.png"))  # no records: no plot is drawn from nothing


def test_compare_two_sweeps(runs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    rec = _record("tiny", "arith", "n", "sft", 1, {1: 0.8})
    write_record(other / f"{rec['cell_id']}.json", rec)
    cmp = tables.compare(tables.load_records(runs), tables.load_records(other), labels=("base", "new"))
    row = cmp.loc[("tiny", "arith", "n", "sft", "greedy")]
    assert row["base mean"] == pytest.approx(60.0) and row["base seeds"] == 2  # (50 + 70) / 2
    assert row["new mean"] == pytest.approx(80.0)
    assert row["Δ (new - base)"] == pytest.approx(20.0)
    reft = cmp.loc[("tiny", "arith", "n", "reft", "greedy")]
    assert math.isnan(reft["new mean"]) and math.isnan(reft["Δ (new - base)"])  # only one side has it


def test_vote_figure_vote_by_k_beside_greedy(runs):
    curves = plots.load_curves(runs)
    assert curves.votes[["k", "vote_accuracy"]].values.tolist() == [[1, 0.5], [4, 0.8], [16, 0.95]]
    (ax,) = plots.vote_figure(curves).axes
    x, y = _line(ax, "sft: vote")
    assert x.tolist() == [1, 4, 16] and y == pytest.approx([50, 80, 95])
    assert _line(ax, "sft: greedy")[1][0] == pytest.approx(90)  # the record's greedy accuracy (best epoch)
    assert ax.get_xscale() == "log"


def test_long_budget_legends_sit_under_their_panels(runs, recwarn):
    """Budget labels as long as the demo's are wrapped under each panel: the legend neither covers the curves
    nor squeezes the panel (matplotlib's "constrained_layout not applied" warning)."""
    curves = plots.load_curves(runs)
    curves.cells["budget"] = ("warm-up SFT epoch 3/4 (the first with >= 25% of training samples right) + 3 x 320 "
                              "questions, best epoch 3")
    figures = [plots.accuracy_figure(curves), plots.step_figure(curves, ("tiny", "arith", "n")),
               plots.vote_figure(curves)]
    for fig in figures:
        fig.draw_without_rendering()
        holders = [h for h in [fig, *fig.subfigs] if h.legends]
        assert holders
        for holder in holders:
            axes = [ax for ax in (fig.axes if holder is fig else holder.axes) if ax.get_visible()]
            (legend,) = holder.legends
            assert max(len(t.get_text().split("\n")[0]) for t in legend.get_texts()) <= plots.LEGEND_WRAP * len(axes)
            for ax in axes:
                box = ax.get_window_extent()
                assert box.height > 0.5 * plots.PANEL_IN[1] * fig.dpi  # the panel kept most of its height
                assert legend.get_window_extent().y1 <= box.y0  # the legend is below the axes
    assert not [w for w in recwarn if "constrained_layout" in str(w.message)]
