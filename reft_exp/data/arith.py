"""A generated arithmetic word-problem task that a ~1M-parameter model can learn on a CPU in minutes.

Each problem starts with a quantity and applies 1-3 operations (add, take away, multiply, share equally),
told in one of several phrasings, with optional distractor sentences carrying irrelevant numbers. Each
record has both annotations in the official schema (``item_id``, ``question``, ``answer_cot``,
``answer_value``; train_sft_model.py:92-96): an N-CoT (one sentence per step, the ReFT trigger is appended
by the prompt builder) and a P-CoT (a ``def solution():`` program whose docstring is the question, as the
official ``*_python_sdp.json``; header: train_rl_reft.py:153). Generation is deterministic given the seed;
train and test are disjoint by question text.

``program_forms`` lets one question have several valid programs while its annotation shows one: each record's
program is written in one of the listed forms, drawn per record (``stepwise``: each step's operand then its
result; ``declare_first``: every quantity first, then the steps; ``one_expression``: every quantity first, then
one expression). The default, ``("stepwise",)``, draws nothing, so its records are those of earlier versions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = [
    ("Tom", "he", "his"), ("Anna", "she", "her"), ("Ben", "he", "his"), ("Lucy", "she", "her"),
    ("Sam", "he", "his"), ("Mia", "she", "her"), ("Max", "he", "his"), ("Emma", "she", "her"),
    ("Leo", "he", "his"), ("Zoe", "she", "her"),
]
ITEMS = ["apples", "marbles", "stickers", "cookies", "pencils", "books", "coins", "cards", "shells", "toys"]
FRIENDS = ["a friend", "his sister", "her brother", "the teacher", "a neighbor"]


@dataclass
class _Step:
    op: str  # add | sub | mul | div
    operand: int
    sentence: str
    cot: str  # N-CoT sentence template, filled with the running value
    var: str  # P-CoT variable name of the operand


def _step_phrasings(rng: random.Random, op: str, name: str, pron: str, item: str, k: int) -> tuple[str, str, str]:
    """(question sentence, N-CoT sentence with {prev}/{res} slots, P-CoT operand variable name).

    Short sentences on purpose: sequence length decides how fast the tiny model trains on a CPU."""
    P = pron.capitalize()
    if op == "add":
        options = [
            (f"{P} buys {k} more.", f"{P} buys {k} more, so {{prev}} + {k} = {{res}}.", f"{item}_bought"),
            (f"{name} finds {k} more {item}.", f"{P} finds {k}, so {{prev}} + {k} = {{res}}.", f"{item}_found"),
            (f"{P} gets {k} {item} as a gift.", f"{P} gets {k}, so {{prev}} + {k} = {{res}}.", f"{item}_gift"),
        ]
    elif op == "sub":
        options = [
            (f"{P} gives {k} away.", f"{P} gives {k} away, so {{prev}} - {k} = {{res}}.", f"{item}_given"),
            (f"{name} loses {k} {item}.", f"{P} loses {k}, so {{prev}} - {k} = {{res}}.", f"{item}_lost"),
            (f"{P} sells {k} of them.", f"{P} sells {k}, so {{prev}} - {k} = {{res}}.", f"{item}_sold"),
        ]
    elif op == "mul":
        options = [
            (f"Then {pron} has {k} times as many.", f"{k} times as many is {{prev}} * {k} = {{res}}.", "factor"),
            (f"{P} gets {k} boxes like that.", f"{k} boxes of {{prev}} is {{prev}} * {k} = {{res}}.", "num_boxes"),
        ]
    else:  # div
        options = [
            (f"{P} splits them into {k} equal bags and keeps one.",
             f"One of {k} bags is {{prev}} / {k} = {{res}}.", "num_bags"),
            (f"{P} shares them equally among {k} people, {pron} included.",
             f"Shared by {k} people, {pron} keeps {{prev}} / {k} = {{res}}.", "num_people"),
        ]
    return options[rng.randrange(len(options))]


PROGRAM_FORMS = ("stepwise", "declare_first", "one_expression")


def _program_body(form: str, start: tuple[str, int], steps: list[tuple[str, int, str, str]]) -> list[str]:
    """The lines of ``solution()`` after its docstring, up to ``result = ...``. ``start``: (variable, value);
    ``steps``: (operand variable, operand, operator, result variable) per step."""
    start_var, start_value = start
    operands = [f"    {var} = {k}" for var, k, _, _ in steps]
    computed, prev = [], start_var
    for var, _, symbol, res_var in steps:
        computed.append(f"    {res_var} = {prev} {symbol} {var}")
        prev = res_var
    head = [f"    {start_var} = {start_value}"]
    if form == "stepwise":
        return head + [line for pair in zip(operands, computed) for line in pair] + [f"    result = {prev}"]
    if form == "declare_first":
        return head + operands + computed + [f"    result = {prev}"]
    expr = start_var
    for i, (var, _, symbol, _) in enumerate(steps):
        expr = f"({expr} {symbol} {var})" if i < len(steps) - 1 else f"{expr} {symbol} {var}"
    return head + operands + [f"    result = {expr}"]


class ArithGenerator:
    """Draws problems from a seeded RNG. ``max_answer`` bounds every intermediate value."""

    def __init__(self, seed: int, min_steps: int = 1, max_steps: int = 3, max_start: int = 20,
                 max_operand: int = 9, distractor_prob: float = 0.3, max_answer: int = 200,
                 program_forms: tuple[str, ...] | list[str] = ("stepwise",)):
        unknown = [f for f in program_forms if f not in PROGRAM_FORMS]
        if unknown or not program_forms:
            raise ValueError(f"arith: program_forms must be a non-empty list of {list(PROGRAM_FORMS)}, "
                             f"got {list(program_forms)}")
        self.rng = random.Random(seed)
        self.min_steps, self.max_steps = min_steps, max_steps
        self.max_start, self.max_operand = max_start, max_operand
        self.distractor_prob, self.max_answer = distractor_prob, max_answer
        self.program_forms = list(program_forms)

    def _draw_ops(self, start: int, n_steps: int) -> list[tuple[str, int, int]] | None:
        rng, value, ops = self.rng, start, []
        for _ in range(n_steps):
            op = rng.choice(["add", "sub", "mul", "div"])
            if op == "add":
                k = rng.randint(1, self.max_operand)
                new = value + k
            elif op == "sub":
                if value < 2:
                    return None
                k = rng.randint(1, min(self.max_operand, value - 1))
                new = value - k
            elif op == "mul":
                k = rng.randint(2, 4)
                new = value * k
            else:
                divisors = [d for d in range(2, 6) if value % d == 0]
                if not divisors:
                    return None
                k = rng.choice(divisors)
                new = value // k
            if not 0 <= new <= self.max_answer:
                return None
            ops.append((op, k, new))
            value = new
        return ops

    def draw(self) -> dict:
        rng = self.rng
        name, pron, _poss = rng.choice(NAMES)
        item = rng.choice(ITEMS)
        n_steps = rng.randint(self.min_steps, self.max_steps)
        while True:
            start = rng.randint(2, self.max_start)
            ops = self._draw_ops(start, n_steps)
            if ops is not None:
                break
        sentences = [f"{name} has {start} {item}."]
        cot = [f"{name} starts with {start}."]
        steps: list[tuple[str, int, str, str]] = []
        prev = start
        used_vars = {f"{item}_start"}
        for i, (op, k, new) in enumerate(ops):
            q_sent, cot_sent, var = _step_phrasings(rng, op, name, pron, item, k)
            if rng.random() < self.distractor_prob:
                other = rng.choice([it for it in ITEMS if it != item])
                sentences.append(f"{rng.choice(FRIENDS).capitalize()} has {rng.randint(2, self.max_start)} {other}.")
            sentences.append(q_sent)
            cot.append(cot_sent.format(prev=prev, res=new))
            while var in used_vars:
                var = f"{var}_{i + 1}"
            used_vars.add(var)
            symbol = {"add": "+", "sub": "-", "mul": "*", "div": "//"}[op]
            steps.append((var, k, symbol, f"{item}_after_step_{i + 1}"))
            prev = new
        question_form = rng.choice([
            f"How many {item} does {name} have now?",
            f"How many {item} does {pron} have in the end?",
            f"How many {item} does {name} have left?",
        ])
        question = " ".join(sentences + [question_form])
        # one form per record, drawn only when there is a choice (the default stream is unchanged)
        form = self.program_forms[rng.randrange(len(self.program_forms))] if len(self.program_forms) > 1 \
            else self.program_forms[0]
        code = _program_body(form, (f"{item}_start", start), steps)
        program = "def solution():\n" + f'    """{question}"""\n' + "\n".join(code) + "\n    return result"
        return {"question": question, "answer_cot_n": " ".join(cot), "answer_cot_p": program,
                "answer_value": str(prev)}


def generate_arith(seed: int, train_size: int, test_size: int, cot: str, val_size: int = 0,
                   **kwargs) -> dict[str, list[dict]]:
    """Train and test splits (and ``val`` when ``val_size``) in the record schema of the official data files
    (item_id, question, answer_cot, answer_value: data/gsm8k_nl.json), disjoint by question text.
    The validation questions are drawn last, so train and test are the same with or without them."""
    gen = ArithGenerator(seed, **kwargs)
    seen: set[str] = set()
    sizes = {"test": test_size, "train": train_size} | ({"val": val_size} if val_size else {})  # drawn in this order
    splits: dict[str, list[dict]] = {"train": [], "test": []} | ({"val": []} if val_size else {})
    for split, size in sizes.items():
        attempts = 0
        while len(splits[split]) < size:
            attempts += 1
            if attempts > 50 * (size + 10):
                raise ValueError(f"arith: cannot draw {size} distinct {split} problems; widen the ranges")
            rec = gen.draw()
            if rec["question"] in seen:
                continue
            seen.add(rec["question"])
            idx = len(splits[split])
            # official test files carry no CoT (data/gsm8k_test_set.json:2-6); ours keep it for inspection
            # (never used for scoring)
            splits[split].append({"item_id": f"arith_{split}_{idx}", "question": rec["question"],
                                  "answer_cot": rec[f"answer_cot_{cot}"], "answer_value": rec["answer_value"]})
    return splits
