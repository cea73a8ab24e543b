"""The evaluation / training protocol of the official code (lqtrung1998/mwp_ReFT) as config defaults, each
pinned here (docs/fidelity.md lists the upstream file:line of every row)."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from reft_exp.answers import AnswerSpec, extract_answers, rerank_candidate, vote_candidate
from reft_exp.config import OfflineSTConfig, OnlineSTConfig, TinyModelConfig, load_run_config
from reft_exp.methods.offline_st import offline_records
from reft_exp.methods.online_st import online_update
from reft_exp.models import build_tiny_model, load_causal_lm
from reft_exp.rl.loop import rl_questions
from reft_exp.rl.rollout import Rollout
from reft_exp.voting import majority_vote, select_offline_samples, vote_accuracy_by_k

NUM = AnswerSpec(answer_type="numeric", cot="n")
MCQ_P = AnswerSpec(answer_type="mcq", cot="p")


# ------------------------------------------------------------------------------------------ config defaults
def test_config_defaults_are_the_official_protocol():
    reft = load_run_config(["model=codellama-7b", "dataset=gsm8k", "cot=p", "method=reft"])
    assert (reft.method.eval_with_header, reft.method.eval_max_length) == (True, 700)
    assert reft.method.max_prompt_length == 300 and reft.executor.timeout_s == 10.0
    assert reft.method.disable_dropout is True  # every policy forward in eval mode (train_rl_reft.py:275, 455)
    assert reft.sft.save_epochs is None  # every SFT epoch kept, as the SFT template (keep_num_ckpt 40)
    assert reft.sft.eval_max_length == 1024 and reft.sft.eval_every_steps is None
    onst = load_run_config(["model=codellama-7b", "dataset=svamp", "method=online_st"]).method
    assert (onst.ppo_epochs, onst.gt_max_length, onst.disable_dropout) == (2, 300, False)
    assert (onst.eval_with_header, onst.eval_max_length) == (True, 700)
    steps = {ds: load_run_config(["model=codellama-7b", f"dataset={ds}", "method=offline_st"]).method
             for ds in ("svamp", "gsm8k", "mathqa", "mathqa_numeric")}
    assert {ds: m.eval_every_steps for ds, m in steps.items()} == {
        "svamp": 90, "gsm8k": 175, "mathqa": 350, "mathqa_numeric": 175}
    assert steps["svamp"].data_mode == "upstream"
    vote = load_run_config(["model=codellama-7b", "dataset=gsm8k", "inference=majority_vote"]).inference
    assert vote.vote_grouping == "exact"
    rr = load_run_config(["model=codellama-7b", "dataset=gsm8k", "inference=rerank"]).inference.reranker
    assert (rr.selection, rr.eval_every_steps, rr.heldout_fraction) == ("best_on_test", 1000, 0.0)


def test_tiny_scale_sets_its_own_lengths():
    cfg = load_run_config(["method=reft"])
    assert cfg.method.eval_max_length == 300 and cfg.sft.eval_max_length == 312
    offline = load_run_config(["method=offline_st"])
    assert offline.method.eval_every_steps is None and offline.method.epochs == offline.sft.epochs  # as tiny SFT


@pytest.mark.parametrize("override", ["inference=majority_vote", "inference.vote_grouping=fuzzy"])
def test_bad_protocol_switches_fail_with_one_line(override):
    from reft_exp.config import ConfigError

    if override.startswith("inference="):
        load_run_config([override])  # valid
        return
    with pytest.raises(ConfigError, match="vote_grouping"):
        load_run_config(["inference=majority_vote", override])


# ------------------------------------------------------------------------------------------- majority vote
def test_vote_counts_exact_values_by_default():
    # upstream's Counter: 2.0, 2.001 and 1.999 are three answers, 2.5 (twice) wins; tolerance groups them
    answers = [2.5, 2.5, 2.0, 2.001, 1.999]
    assert majority_vote(answers, NUM) == 2.5
    assert majority_vote(answers, NUM, grouping="tolerance") == 2.0
    rows = [{"gold": "2", "samples": [{"pred": a} for a in answers]}]
    assert vote_accuracy_by_k(rows, NUM, [5], 1, 0) == {5: 0.0}
    assert vote_accuracy_by_k(rows, NUM, [5], 1, 0, grouping="tolerance") == {5: 1.0}


def test_exact_vote_ties_go_to_the_first_seen():
    assert majority_vote([3.0, 7.0, 7.0, 3.0], NUM) == 3.0
    assert majority_vote([None, 7.0, 3.0], NUM) == 7.0


# ---------------------------------------------------------------------------------------- answers / rerank
def test_mcq_program_answers_are_the_str_of_the_value_as_upstream():
    from reft_exp.execute import ProgramExecutor

    progs = ['def solution():\n    """q"""\n    return sympy.Rational(1, 2)', "def solution():\n    return 'B'",
             "def solution():\n    return 0.5", "def solution():\n    return 1/0", "x = 1",
             "def solution():\n    return sympy.sqrt(2)"]
    with ProgramExecutor(timeout_s=10, workers=1) as ex:
        got = extract_answers(progs, MCQ_P, executor=ex)
    assert got == ["1/2", "b", "0.5", "none", "none", "sqrt(2)"]


def test_rerank_candidates_of_multiple_choice_are_letters():
    mcq = AnswerSpec(answer_type="mcq", cot="n")
    assert [rerank_candidate(p, mcq) for p in ["c", "1", "none", None]] == ["c", None, None, None]
    assert vote_candidate("1", mcq) == "1", "a single digit still votes (sampling.py only checks the length)"
    assert rerank_candidate(3.0, NUM) == 3.0


# --------------------------------------------------------------------------------------- RL questions
def test_rl_questions_keep_long_prompts():
    train = [{"item_id": str(i), "question": "word " * (50 * i)} for i in range(5)]
    assert [r["item_id"] for r in rl_questions(train, None)] == ["0", "1", "2", "3", "4"]
    assert [r["item_id"] for r in rl_questions(train, 2)] == ["0", "1"]


# ---------------------------------------------------------------------------------- offline self-training
class _Samples:
    def __init__(self, rows):
        self.rows = rows


def test_offline_data_has_the_ground_truth_twice_and_a_sample_equal_to_it_takes_a_slot():
    gold = "def solution():\n    return 4"
    texts = [gold + "\n", "a", "a", "b", "wrong", "c"]
    correct = [True, True, True, True, False, True]
    assert select_offline_samples(texts, correct, gold, 3) == [gold, "a", "b", gold]
    assert select_offline_samples(texts[1:], correct[1:], gold, 3) == ["a", "b", "c", gold, gold]
    assert select_offline_samples([gold, *texts[1:]], correct, gold, 3, mode="dedup") == ["a", "b", "c", gold]
    train = [{"item_id": "q1", "question": "Q1", "answer_cot": gold, "answer_value": "4"},
             {"item_id": "q2", "question": "Q2", "answer_cot": gold, "answer_value": "4"}]
    samples = _Samples([{"item_id": "q1", "samples": [{"text": t, "correct": c} for t, c in zip(texts, correct)]}])
    recs = offline_records(train, samples, OfflineSTConfig(max_correct_per_question=3), "p")
    assert [(r["item_id"], r["target"], r["ground_truth"]) for r in recs] == [
        ("q1", gold, True), ("q1", "a", False), ("q1", "b", False), ("q1", gold, True), ("q2", gold, True)]


# ---------------------------------------------------------------------------------- online self-training
def _lm(tmp_path):
    cfg = TinyModelConfig(name="tiny", kind="tiny", vocab_size=64, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    build_tiny_model(tmp_path, ["Question:\nAnswer reasoning:\n 0123456789 abc"], cfg)
    torch.manual_seed(0)
    return load_causal_lm(tmp_path, cfg)


def test_online_update_takes_ppo_epochs_optimizer_steps(tmp_path):
    lm = _lm(tmp_path)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, lm.config.vocab_size, (4, 12), generator=g)
    ro = Rollout(records=[{}] * 4, completions=[""] * 4, input_ids=ids, attention_mask=torch.ones_like(ids),
                 response_mask=torch.ones(4, 8), prompt_width=4)
    gt = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0])
    acc = Accelerator(cpu=True)
    counts = {}
    for passes in (1, 2):
        model = _lm(tmp_path / str(passes))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        online_update(acc, OnlineSTConfig(ppo_epochs=passes), model, opt, ro, keep, gt)
        counts[passes] = int(opt.state[next(iter(model.parameters()))]["step"])
        assert model.training, "online self-training trains in train mode (train_rl_sl.py:320)"
    assert counts == {1: 1, 2: 2}
