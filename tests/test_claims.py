"""The claims report (reft_exp/claims.py) built from constructed records: holds / does not hold / missing."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from reft_exp import claims
from reft_exp.results import RECORD_VERSION

SEEDS = (42, 43, 44)
# Per seed: greedy accuracies (fractions) of each method, and the ReFT epochs' (score, KL).
GREEDY = {"sft": (0.60, 0.62, 0.58), "offline_st": (0.60, 0.70, 0.55), "reft": (0.63, 0.66, 0.62)}
VOTE = {"sft": (0.65, 0.66, 0.64), "reft": (0.64, 0.70, 0.60)}
SFT_WITH_HEADER = (0.64, 0.63, 0.60)  # SFT's best checkpoint with the program header in the prompt (header_check)
RERANK = {"sft": (0.70, 0.69, 0.71), "reft": (0.75, 0.74, 0.73)}
REFT_EPOCHS = [(0.40, 0.10), (0.50, 0.30), (0.60, 0.50)]
KL0_FINAL = (1.5, 0.4, 2.0)  # final-epoch KL of the beta-0 runs: above 0.5 in two seeds of three, below in one


def _record(method: str, inf: str, seed: int, accuracy: float, tag: str = "claims", **extra) -> dict:
    return {"record_version": RECORD_VERSION, "status": "complete", "accuracy": accuracy,
            "cell_id": f"tiny__arith__p__{method}__{inf}__seed{seed}__{tag}",
            "coordinates": {"model": "tiny", "dataset": "arith", "cot": "p", "method": method,
                            "inference": inf, "seed": seed},
            "config": {"tag": tag, "cot": {"name": "p"}, "dataset": {"warmup_epoch": {"p": 2}, "train_size": 400},
                       "sft": {"epochs": 4, "batch_size": 16},
                       "method": {"epochs": 3, "max_questions": 640, "batch_size": 64, "kl_coef": 0.01}},
            **extra}


def _epochs(rows) -> list[dict]:
    return [{"epoch": 0, "test_accuracy": 0.5}] + [
        {"epoch": i, "score": s, "kl": k, "test_accuracy": 0.6} for i, (s, k) in enumerate(rows, start=1)]


def write_sweep(runs, *, online=False, kl0=True, reft_kl_peak=None, warmups=None, with_header=True):
    """``warmups``: per seed, (epoch, training-sample accuracy) of a rule-picked ReFT warm-up."""
    runs.mkdir(parents=True, exist_ok=True)
    recs = []
    for i, seed in enumerate(SEEDS):
        for method, accs in GREEDY.items():
            epochs = _epochs(REFT_EPOCHS) if method == "reft" else []
            if method == "reft" and reft_kl_peak is not None:
                epochs[2]["kl"] = reft_kl_peak
            extra = {}
            if method == "reft" and warmups:
                epoch, acc = warmups[seed]
                extra["warmup"] = {"epoch": epoch, "rule": "min_sample_accuracy", "min_sample_accuracy": 0.25,
                                   "train_sample_accuracy": {str(epoch - 1): 0.1, str(epoch): acc}}
            if method == "sft" and with_header:
                extra["inference"] = {"name": "greedy", "accuracy_with_header": SFT_WITH_HEADER[i]}
            recs.append(_record(method, "greedy", seed, accs[i], epochs=epochs, best_epoch=3, **extra))
        if online:
            recs.append(_record("online_st", "greedy", seed, 0.5))
        for method, accs in VOTE.items():
            recs.append(_record(method, "majority_vote", seed, accs[i], inference={
                "num_samples": 8, "vote_accuracy_by_k": {"1": accs[i] - 0.1, "8": accs[i]}}))
        for method, accs in RERANK.items():
            recs.append(_record(method, "rerank", seed, accs[i]))
        if kl0:
            recs.append(_record("reft", "greedy", seed, 0.6, tag="claims-kl0",
                                epochs=_epochs([(0.4, 0.2), (0.5, KL0_FINAL[i])])))
        recs.append(_record("reft", "greedy", seed, 0.99, tag="other-sweep"))  # another sweep: ignored
    for rec in recs:
        (runs / f"{rec['cell_id']}.json").write_text(json.dumps(rec))


def _rows(runs) -> pd.DataFrame:
    return claims.build_claims(claims._by_seed(runs, "claims")).set_index("id")


def test_each_claim_gets_the_verdict_its_numbers_give(tmp_path):
    write_sweep(tmp_path / "runs")
    t = _rows(tmp_path / "runs")
    # (1) ReFT - SFT = +3, +4, +4: mean 3.67, std 0.58 -> holds
    assert t.loc["1", "mean"] == pytest.approx(11 / 3)
    assert t.loc["1", "std"] == pytest.approx(math.sqrt(1 / 3))
    assert (t.loc["1", "seeds"], t.loc["1", "verdict"]) == (3, claims.HOLDS)
    # (2a) ReFT - offline = +3, -4, +7: mean 2, std 5.57 -> does not hold; (2b) no online records -> missing
    assert t.loc["2a", "mean"] == pytest.approx(2.0) and t.loc["2a", "verdict"] == claims.NOT_HOLDS
    assert (t.loc["2b", "seeds"], t.loc["2b", "verdict"]) == (0, claims.MISSING) and math.isnan(t.loc["2b", "mean"])
    # (1b) ReFT - SFT with the program header = -1, +3, +2: mean 1.33, std 2.08 -> does not hold (one prompt);
    # (3c) SFT vote - SFT with the header = +1, +3, +4: mean 2.67, std 1.53 -> holds
    assert t.loc["1b", "per_seed"] == "42: -1.00; 43: +3.00; 44: +2.00" and t.loc["1b", "verdict"] == claims.NOT_HOLDS
    assert t.loc["3c", "mean"] == pytest.approx(8 / 3) and t.loc["3c", "verdict"] == claims.HOLDS
    assert t.loc["1b", "paper"] == t.loc["1", "paper"]  # the paper has the official prompts only
    # (3b) ReFT vote - greedy = +1, +4, -2 -> does not hold; (4a) SFT rerank - vote = +5, +3, +7 -> holds
    assert t.loc["3b", "verdict"] == claims.NOT_HOLDS and t.loc["4a", "verdict"] == claims.HOLDS
    # (5) ReFT + rerank minus the best other cell (SFT rerank 70, offline / ReFT vote 70, SFT rerank 71): +5, +4, +2
    assert t.loc["5", "per_seed"] == "42: +5.00; 43: +4.00; 44: +2.00" and t.loc["5", "verdict"] == claims.HOLDS
    # (6) beta-0 final KL minus default (0.5): +1.0, -0.1, +1.5: mean 0.8, std 0.82 -> does not hold
    assert t.loc["6", "mean"] == pytest.approx(0.8) and t.loc["6", "verdict"] == claims.NOT_HOLDS
    # (7) reward 0.4 -> 0.6 every seed, KL <= 0.5 -> holds
    assert t.loc["7", "mean"] == pytest.approx(0.2) and t.loc["7", "verdict"] == claims.HOLDS
    assert "max epoch KL 0.50" in t.loc["7", "claim"]
    # the paper's side: ReFT - SFT over its 14 greedy cells, and the CodeLlama GSM8K P-CoT example (72.8 - 64.4)
    assert t.loc["1", "paper"].endswith("CodeLlama GSM8K P-CoT +8.4") and "over 14 cells" in t.loc["1", "paper"]
    assert t.loc["6", "paper"].startswith("qualitative")


def test_kl_above_the_bound_fails_claim_seven_and_missing_cells_say_missing(tmp_path):
    write_sweep(tmp_path / "runs", kl0=False, reft_kl_peak=5.0, with_header=False)
    t = _rows(tmp_path / "runs")
    assert t.loc["7", "verdict"] == claims.NOT_HOLDS and "max epoch KL 5.00 (bound 2)" in t.loc["7", "claim"]
    assert t.loc["6", "verdict"] == claims.MISSING
    # SFT records without accuracy_with_header (N-CoT, or header_check off): the one-prompt claims are missing
    assert (t.loc["1b", "verdict"], t.loc["3c", "verdict"]) == (claims.MISSING, claims.MISSING)
    assert t.loc["1", "verdict"] == claims.HOLDS


def test_report_files_hold_every_claim_and_the_vote_curve(tmp_path):
    write_sweep(tmp_path / "runs", online=True)
    paths = claims.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--tag", "claims"])
    assert [p.name for p in paths] == ["claims.md", "claims.csv"]
    csv = pd.read_csv(tmp_path / "out" / "claims.csv", dtype={"id": str})
    assert list(csv["id"]) == ["1", "1b", "2a", "2b", "3a", "3b", "3c", "4a", "4b", "5", "6", "7"]
    assert csv.set_index("id").loc["2b", "verdict"] == claims.HOLDS  # ReFT 63-66% vs online 50%
    md = (tmp_path / "out" / "claims.md").read_text()
    assert "3 seed(s) (42, 43, 44)" in md
    assert ("Budget: SFT: SFT 4 epochs, best 3/4; ReFT: warm-up SFT epoch 2/4 + 3 x 640 questions, best epoch 3; "
            "K = 8 samples per test question.") in md
    assert md.count("| holds") + md.count("| does not hold") == 12
    assert "warm-up per seed" not in md  # the records carry no rule-picked warm-up
    # vote accuracy against K: the mean over seeds of K=1 and K=8 per method
    assert "Majority-vote accuracy against K" in md
    curve = claims.vote_curve(claims._by_seed(tmp_path / "runs", "claims")).set_index(["method", "K"])
    assert curve.loc[("sft", 8), "mean"] == pytest.approx(65.0) and curve.loc[("sft", 1), "mean"] == pytest.approx(55.0)


def test_report_names_each_seeds_warmup_when_a_rule_picked_it(tmp_path):
    write_sweep(tmp_path / "runs", warmups={42: (2, 0.375), 43: (3, 0.40), 44: (4, 0.2)})
    claims.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--tag", "claims"])
    md = (tmp_path / "out" / "claims.md").read_text()
    assert ("ReFT: warm-up SFT epoch 2/4 (the first with >= 25% of training samples right) + 3 x 640 questions, "
            "best epoch 3;") in md  # the budget line: the first seed's
    assert ("ReFT's warm-up per seed: 42: epoch 2 (37.5% of training samples right), 43: epoch 3 (40.0% of "
            "training samples right), 44: epoch 4 (20.0% of training samples right).") in md


def test_untagged_sweep_folder_takes_other_tags_as_variants(tmp_path):
    write_sweep(tmp_path / "runs")
    for path in (tmp_path / "runs").glob("*.json"):  # the claims sweep's own folder: main cells untagged
        rec = json.loads(path.read_text())
        rec["config"]["tag"] = {"claims": "", "claims-kl0": "kl0"}.get(rec["config"]["tag"], "other")
        path.write_text(json.dumps(rec))
    seeds = claims._by_seed(tmp_path / "runs", "")
    assert sorted(seeds[42]) == sorted([(m, "greedy", "") for m in GREEDY] + [(m, i, "") for m in VOTE for i in (
        "majority_vote", "rerank")] + [("reft", "greedy", "kl0"), ("reft", "greedy", "other")])
    assert claims.build_claims(seeds).set_index("id").loc["6", "mean"] == pytest.approx(0.8)


def test_no_records_gives_every_claim_missing(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.warns(UserWarning, match="no records of the sweep"):
        claims.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    csv = pd.read_csv(tmp_path / "out" / "claims.csv")
    assert set(csv["verdict"]) == {claims.MISSING}
