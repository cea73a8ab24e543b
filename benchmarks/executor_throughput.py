"""Throughput of the sandboxed P-CoT executor versus an upstream-style process pool.

Runs the SVAMP P-CoT training programs (``svamp_python_sdp.json``, field ``answer_cot``) through

* ours: ``reft_exp.execute.ProgramExecutor`` (bubblewrap + seccomp sandbox, zygote + persistent workers), and
* baseline: a plain ``concurrent.futures.ProcessPoolExecutor`` (fork start, sympy imported first,
  ``RLIMIT_AS`` set in the initializer) with one task per program and ``future.result(timeout)``,
  which is what upstream's ``run_python_code`` does with pebble.

and prints programs/s for both, the ratio and how many answers match the gold value.  "cold" includes
starting the pool (upstream creates a new pool for every call); "warm" is a second batch on the same,
already started pool.  Usage::

    python benchmarks/executor_throughput.py            # all 3,043 programs
    python benchmarks/executor_throughput.py --limit 50 # quick smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import sympy

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from reft_exp.execute import DEFAULT_PREAMBLE, ProgramExecutor, program_from_completion  # noqa: E402

DATA_RELATIVE_PATH = Path("data/reft/svamp_python_sdp.json")
TOLERANCE = 1e-2  # upstream's numeric correctness threshold
BASELINE_MEMORY_BYTES = 2**30  # per worker, like upstream's initializer (which used 120 GB)
DEFAULT_TIMEOUT_S = 10.0


def default_data_path() -> Path:
    shared = Path(os.environ.get("REFT_SHARED_DIR", REPO_ROOT.parent / "shared"))
    return shared / DATA_RELATIVE_PATH


# -- baseline (upstream style) --------------------------------------------------------------------
def _baseline_initializer(memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _baseline_run(code: str) -> object:
    """Upstream's ``run``: exec with {math, sympy} globals and separate locals, eval solution()."""
    program_globals: dict = {"math": math, "sympy": sympy}
    program_locals: dict = {}
    exec(code, program_globals, program_locals)
    try:
        return eval("solution()", program_globals, program_locals)
    except Exception:  # noqa: BLE001 - upstream's bare except
        return None


def _floatify(value: object) -> float | None:
    try:
        return float(value)
    except Exception:  # noqa: BLE001 - upstream's floatify
        return None


def run_baseline(pool: concurrent.futures.ProcessPoolExecutor, programs: Sequence[str],
                 timeout_s: float) -> list[float | None]:
    codes = [DEFAULT_PREAMBLE + program for program in programs]
    futures = [pool.submit(_baseline_run, code) for code in codes]
    answers = []
    for future in futures:
        try:
            answers.append(_floatify(future.result(timeout=timeout_s)))
        except Exception:  # noqa: BLE001 - timeout or error in the task: None, as upstream
            answers.append(None)
    return answers


def make_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("fork"),
        initializer=_baseline_initializer, initargs=(BASELINE_MEMORY_BYTES,),
    )


# -- measurement ----------------------------------------------------------------------------------
def count_correct(answers: Sequence[object], golds: Sequence[float]) -> int:
    correct = 0
    for answer, gold in zip(answers, golds):
        value = _floatify(answer)
        correct += value is not None and abs(value - gold) <= TOLERANCE
    return correct


def timed(fn: Callable[[], list]) -> tuple[list, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="svamp_python_sdp.json")
    parser.add_argument("--limit", type=int, default=None, help="only the first N programs")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--isolation", choices=("strict", "none"), default="strict", help="ours: sandbox or not")
    args = parser.parse_args(argv)

    data_path = args.data or default_data_path()
    if not data_path.exists():
        print(f"data not found: {data_path} (set REFT_SHARED_DIR or pass --data)", file=sys.stderr)
        return 2
    records = json.loads(data_path.read_text())[: args.limit]
    programs = [program_from_completion(record["answer_cot"]) for record in records]
    golds = [float(str(record["answer_value"]).replace(",", "")) for record in records]
    n = len(programs)
    print(f"{n} SVAMP P-CoT programs, {args.workers} workers, {os.cpu_count()} CPUs, timeout {args.timeout}s")

    start = time.perf_counter()
    with ProgramExecutor(timeout_s=args.timeout, workers=args.workers, isolation=args.isolation) as executor:
        startup = time.perf_counter() - start
        print(f"ours     : layers {executor.layers}")
        cold, cold_s = timed(lambda: [r.answer for r in executor.run(programs)])
        warm, warm_s = timed(lambda: [r.answer for r in executor.run(programs)])
    print(f"ours     : startup {startup:.2f}s | cold {n / cold_s:8.1f} programs/s | "
          f"warm {n / warm_s:8.1f} programs/s | correct {count_correct(warm, golds)}/{n}")

    start = time.perf_counter()
    with make_pool(args.workers) as pool:
        base_cold, base_cold_s = timed(lambda: run_baseline(pool, programs, args.timeout))
        base_cold_s = time.perf_counter() - start  # includes starting the pool, as upstream per call
        base_warm, base_warm_s = timed(lambda: run_baseline(pool, programs, args.timeout))
    print(f"baseline : cold {n / base_cold_s:8.1f} programs/s | warm {n / base_warm_s:8.1f} programs/s | "
          f"correct {count_correct(base_warm, golds)}/{n}")
    print(f"ratio ours/baseline: warm {base_warm_s / warm_s:.2f}x | "
          f"cold (ours incl. startup) {(base_cold_s) / (startup + cold_s):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
