"""Tests of the sandboxed P-CoT executor (reft_exp.execute).

The hostile corpus lives in tests/hostile/, one program per file.  Each file starts with
``# expect: <outcome>`` where outcome is ``timeout``, ``memory``, ``output too large``, ``blocked``,
``exception``, ``crashed`` (error prefixes) or ``answer=<json>``; ``# hook-only: yes`` marks programs
that are also run with the Python-level layers alone.  ``__CANARY_DIR__`` is replaced by a
root-owned temporary directory holding a canary file that must survive untouched.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from reft_exp.execute import ExecResult, ProgramExecutor, program_from_completion

REPO_ROOT = Path(__file__).resolve().parents[1]
HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"
CANARY_TEXT = "canary: must survive the hostile corpus\n"
HOST_TMP_MARKER = Path("/tmp/reft_hostile_marker")  # file_write_tmp.py tries to create it
TOLERANCE = 1e-2
HOSTILE_TIMEOUT_S = 2.0  # short, so the corpus (several endless loops) runs in seconds
HOSTILE_MEMORY_MB = 256  # small, so memory bombs hit the limit fast
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# Normal programs (and their answers) used to check that an executor still serves correctly.
NORMAL_PROGRAMS: list[tuple[str, object]] = [
    ("def solution():\n    return math.sqrt(16) + abs(-2)", 6.0),
    ("def solution():\n    return round(2.675 * 100) + len('abc')", 271),
    ("def solution():\n    x = sympy.Symbol('x')\n    return sympy.solve(3 * x + 2 - 11, x)[0]", 3),
    ("def solution():\n    print('working...')\n    return sympy.Rational(3, 4) * 2", 1.5),
    ("def solution():\n    import numpy as np\n    return np.arange(5).sum()", 10),
    ("def solution():\n    import time\n    time.sleep(0.01)\n    return int('42')", 42),
]


def shared_data_dir() -> Path:
    return Path(os.environ.get("REFT_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))


def svamp_records() -> list[dict]:
    path = shared_data_dir() / "data" / "reft" / "svamp_python_sdp.json"
    if not path.exists():
        pytest.skip(f"SVAMP P-CoT data not found at {path}; set REFT_SHARED_DIR to the shared folder")
    return json.loads(path.read_text())


def matches_gold(answer: object, gold: str | float) -> bool:
    try:
        return abs(float(answer) - float(str(gold).replace(",", ""))) <= TOLERANCE
    except (TypeError, ValueError):
        return False


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (a zombie is gone for our purposes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def assert_serves_normal_programs(executor: ProgramExecutor, repeats: int = 5) -> None:
    programs = [source for source, _ in NORMAL_PROGRAMS] * repeats
    expected = [answer for _, answer in NORMAL_PROGRAMS] * repeats
    for result, answer in zip(executor.run(programs), expected):
        assert result.error is None, result
        assert result.answer == pytest.approx(answer), result


# -- hostile corpus ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hostile:
    name: str
    source: str
    expect: tuple[str, ...]
    hook_only: bool

    def program(self, canary_dir: Path) -> str:
        return self.source.replace("__CANARY_DIR__", str(canary_dir))

    def accepts(self, result: ExecResult) -> bool:
        for expectation in self.expect:
            if expectation.startswith("answer="):
                if result.error is None and result.answer == json.loads(expectation[len("answer="):]):
                    return True
            elif expectation in ("blocked", "exception", "crashed"):
                if result.answer is None and (result.error or "").startswith(expectation + ":"):
                    return True
            elif result.answer is None and result.error == expectation:
                return True
        return False


def load_corpus() -> list[Hostile]:
    corpus = []
    for path in sorted(HOSTILE_DIR.glob("*.py")):
        source = path.read_text()
        header = [line[1:].strip() for line in source.splitlines() if line.startswith("#")]
        expect = next(line.split(":", 1)[1] for line in header if line.startswith("expect:"))
        corpus.append(Hostile(path.stem, source, tuple(e.strip() for e in expect.split("|")),
                              any(line == "hook-only: yes" for line in header)))
    return corpus


CORPUS = load_corpus()


def caller_state() -> dict:
    """What a hostile program might try to change in the calling (pytest) process."""
    return {
        "alive": os.getpid(),
        "cwd": os.getcwd(),
        "pgrp": os.getpgrp(),
        "signals": {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)},
        "environ": dict(os.environ),
        "rlimits": {r: resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_NOFILE)},
    }


def host_state(canary_dir: Path) -> dict:
    canary = canary_dir / "canary.txt"
    return {
        "listing": sorted(os.listdir(canary_dir)),
        "canary": canary.read_text(),
        "mode": canary.stat().st_mode,
        "dir_mode": canary_dir.stat().st_mode,
        "tmp_marker": HOST_TMP_MARKER.exists(),
    }


@pytest.fixture(scope="module")
def canary_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("canary")
    (directory / "canary.txt").write_text(CANARY_TEXT)
    assert not HOST_TMP_MARKER.exists(), f"remove {HOST_TMP_MARKER} left by an earlier run"
    return directory


@pytest.fixture(scope="module")
def hostile_executor():
    with ProgramExecutor(timeout_s=HOSTILE_TIMEOUT_S, memory_mb=HOSTILE_MEMORY_MB, workers=2) as executor:
        yield executor


@pytest.fixture(scope="module")
def hostile_run(hostile_executor: ProgramExecutor, canary_dir: Path) -> dict:
    zygote_pid = hostile_executor.pids[0]
    before_host, before_caller = host_state(canary_dir), caller_state()
    start = time.monotonic()
    results = hostile_executor.run([hostile.program(canary_dir) for hostile in CORPUS])
    return {
        "results": dict(zip([hostile.name for hostile in CORPUS], results)),
        "seconds": time.monotonic() - start,
        "host": (before_host, host_state(canary_dir)),
        "caller": (before_caller, caller_state()),
        "zygote": (zygote_pid, hostile_executor.pids[0]),
    }


@pytest.mark.parametrize("hostile", CORPUS, ids=[hostile.name for hostile in CORPUS])
def test_hostile_program_is_contained(hostile: Hostile, hostile_run: dict) -> None:
    result = hostile_run["results"][hostile.name]
    assert hostile.accepts(result), f"{hostile.name}: expected {hostile.expect}, got {result}"


def test_hostile_corpus_leaves_host_and_caller_unchanged(hostile_run: dict) -> None:
    before, after = hostile_run["host"]
    assert after == before
    assert after["canary"] == CANARY_TEXT and not after["tmp_marker"]
    before, after = hostile_run["caller"]
    assert after == before
    zygote_before, zygote_after = hostile_run["zygote"]
    assert zygote_after == zygote_before, "the zygote was replaced: something killed it"
    # Five endless loops with a 2 s limit on 2 workers, plus a retried crash or two.
    assert hostile_run["seconds"] < 30, hostile_run["seconds"]


def test_executor_still_correct_after_hostile_corpus(hostile_run: dict, hostile_executor: ProgramExecutor) -> None:
    assert_serves_normal_programs(hostile_executor)
    records = svamp_records()[:300]
    results = hostile_executor.run([program_from_completion(r["answer_cot"]) for r in records])
    assert all(matches_gold(res.answer, r["answer_value"]) for res, r in zip(results, records))


@pytest.mark.skipif(not IS_ROOT, reason="the uid drop and namespaces need root")
def test_all_defence_layers_enabled(hostile_executor: ProgramExecutor) -> None:
    layers = hostile_executor.layers
    assert layers["privileges"].startswith("on"), layers
    if sys.platform.startswith("linux") and os.uname().machine == "x86_64":
        for name in ("network", "filesystem", "seccomp"):
            assert layers[name].startswith("on"), layers


def test_python_layers_alone_contain_the_host_attacks(canary_dir: Path) -> None:
    """Audit hook only (no namespaces, no seccomp, still root): file/process/kill/network attacks."""
    subset = [hostile for hostile in CORPUS if hostile.hook_only]
    assert len(subset) >= 15
    before = host_state(canary_dir)
    with ProgramExecutor(timeout_s=HOSTILE_TIMEOUT_S, memory_mb=HOSTILE_MEMORY_MB, workers=2,
                         isolate=False, drop_privileges=False) as executor:
        results = executor.run([hostile.program(canary_dir) for hostile in subset])
        for hostile, result in zip(subset, results):
            assert hostile.accepts(result), f"{hostile.name}: {result}"
        assert_serves_normal_programs(executor, repeats=1)
    assert host_state(canary_dir) == before


@pytest.mark.skipif(not IS_ROOT, reason="the kernel layers need root")
def test_kernel_layers_alone_protect_the_host(canary_dir: Path) -> None:
    """Without the audit hook, the namespaces, uid drop, rlimits and seccomp must still hold."""
    before_host, before_caller = host_state(canary_dir), caller_state()
    with ProgramExecutor(timeout_s=HOSTILE_TIMEOUT_S, memory_mb=HOSTILE_MEMORY_MB, workers=2,
                         audit_hook=False) as executor:
        if not all(layer.startswith("on") for layer in executor.layers.values()):
            pytest.skip(f"kernel layers unavailable here: {executor.layers}")
        zygote = executor.pids[0]
        results = executor.run([hostile.program(canary_dir) for hostile in CORPUS])
        by_name = dict(zip([hostile.name for hostile in CORPUS], results))
        # Process creation, signals and sockets fail in the kernel.
        for name in ("fork_bomb", "os_exec", "kill_parent", "kill_caller", "killpg_zero",
                     "network_connect", "subprocess_run"):
            assert by_name[name].answer is None and by_name[name].error.startswith("exception:"), by_name[name]
        assert executor.pids[0] == zygote
        assert_serves_normal_programs(executor, repeats=1)
    assert host_state(canary_dir) == before_host
    assert caller_state() == before_caller


# -- semantics --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def executor():
    with ProgramExecutor() as default_executor:
        yield default_executor


def test_program_from_completion_follows_upstream() -> None:
    completion = (
        'def solution():\n    """How many?"""\n    apples = 3\n    return apples\n\n'
        "print(solution())\nThe answer is 3."
    )
    assert program_from_completion(completion) == 'def solution():\n    """How many?"""\n    apples = 3\n    return apples'
    assert program_from_completion("\n\ndef solution():\n    return 2\n") == "def solution():\n    return 2"
    assert program_from_completion("def solution():\n    sys.exit(3)\n    return 1") == (
        "def solution():\n    print(3)\n    return 1")
    assert program_from_completion("") == ""


@pytest.mark.parametrize(
    ("body", "answer", "kind"),
    [
        ("return 3", 3, int),
        ("return 2.5", 2.5, float),
        ("return True", True, bool),
        ("return 'b'", "b", str),
        ("return sympy.Integer(7)", 7, int),
        ("return sympy.Rational(1, 4)", 0.25, float),
        ("return sympy.sqrt(4) / 3", 2 / 3, float),
        ("import numpy as np\n    return np.int64(5)", 5, int),
        ("import numpy as np\n    return np.float32(0.5)", 0.5, float),
        ("from fractions import Fraction\n    return Fraction(1, 2)", 0.5, float),
        ("return [1, 2]", "[1, 2]", str),
        ("return 1 + 2j", "(1+2j)", str),
        ("x = sympy.Symbol('x')\n    return x + 1", "x + 1", str),
        ("return None", None, type(None)),
    ],
)
def test_answer_conversion(executor: ProgramExecutor, body: str, answer: object, kind: type) -> None:
    (result,) = executor.run([f"def solution():\n    {body}"])
    assert result.error is None
    assert type(result.answer) is kind
    assert result.answer == pytest.approx(answer) if kind is float else result.answer == answer


@pytest.mark.parametrize(
    ("program", "error"),
    [
        ("def solution():\n    return 1 / 0", "exception: ZeroDivisionError: division by zero"),
        ("def solution(:\n    return 1", "exception: SyntaxError"),
        ("x = 1", "no solution()"),
        ("", "no solution()"),
        # Upstream exec()s with separate globals and locals dicts, so a module-level helper is not
        # visible inside solution(); we keep that quirk to reproduce its rewards exactly.
        ("def helper():\n    return 2\ndef solution():\n    return helper()", "exception: NameError"),
    ],
)
def test_failures_give_none_and_a_reason(executor: ProgramExecutor, program: str, error: str) -> None:
    (result,) = executor.run([program])
    assert result.answer is None
    assert result.error.startswith(error)


def test_run_keeps_order_and_handles_empty_batches(executor: ProgramExecutor) -> None:
    assert executor.run([]) == []
    programs = [f"def solution():\n    return {i}" for i in range(200)]
    assert [result.answer for result in executor.run(programs)] == list(range(200))
    with pytest.raises(TypeError):
        executor.run([b"def solution(): return 1"])


def test_all_svamp_training_programs_execute_to_their_gold_answer(executor: ProgramExecutor) -> None:
    records = svamp_records()
    results = executor.run([program_from_completion(record["answer_cot"]) for record in records])
    wrong = [(r["item_id"], res) for r, res in zip(records, results) if not matches_gold(res.answer, r["answer_value"])]
    assert len(records) == 3043
    assert wrong == []


# -- limits and recovery ----------------------------------------------------------------------------
def test_timeout_costs_only_the_hanging_programs() -> None:
    hang = "def solution():\n    while True:\n        pass"
    programs = [hang, *[f"def solution():\n    return {i}" for i in range(50)], hang]
    with ProgramExecutor(timeout_s=1.0, workers=2) as small:
        start = time.monotonic()
        results = small.run(programs)
        elapsed = time.monotonic() - start
    assert results[0] == results[-1] == ExecResult(None, "timeout")
    assert [result.answer for result in results[1:-1]] == list(range(50))
    assert elapsed < 5.0, elapsed


def test_memory_limit_allows_moderate_use_and_stops_bombs() -> None:
    with ProgramExecutor(memory_mb=256, workers=1) as small:
        fits, bomb = small.run([
            "def solution():\n    block = bytearray(64 * 1024 * 1024)\n    return len(block) // 1024 // 1024",
            "def solution():\n    block = bytearray(1024 * 1024 * 1024)\n    return 1",
        ])
        assert fits == ExecResult(64, None)
        assert bomb == ExecResult(None, "memory")
        assert_serves_normal_programs(small, repeats=1)


def test_output_is_capped_but_small_output_is_fine(executor: ProgramExecutor) -> None:
    small, large = executor.run([
        "def solution():\n    print('x' * 100)\n    return 5",
        "def solution():\n    print('x' * 10 ** 6)\n    return 5",
    ])
    assert small == ExecResult(5, None)
    assert large == ExecResult(None, "output too large")


def test_crash_costs_only_that_program() -> None:
    crashes = ["def solution():\n    import os\n    os._exit(0)",
               "def solution():\n    import faulthandler\n    faulthandler._read_null()"]
    programs = []
    for i in range(10):
        programs += [f"def solution():\n    return {i}", crashes[i % 2]]
    with ProgramExecutor(workers=1) as single:
        results = single.run(programs)
        assert [results[2 * i].answer for i in range(10)] == list(range(10))
        assert all(result.answer is None and result.error.startswith("crashed:") for result in results[1::2])
        assert_serves_normal_programs(single, repeats=1)


def test_poisoning_does_not_reach_later_programs() -> None:
    """One worker, so every later program would run in the same process if it were not retired."""
    by_name = {hostile.name: hostile.source for hostile in CORPUS}
    sqrt = "def solution():\n    return math.sqrt(16)"
    absolute = "def solution():\n    return abs(-5)"
    sleepy = "def solution():\n    import time\n    time.sleep(1.5)\n    return 5"
    with ProgramExecutor(workers=1) as single:
        results = single.run([
            by_name["monkeypatch_math"], sqrt,
            by_name["monkeypatch_builtins"], absolute,
            by_name["builtins_dict_local"], absolute,
            by_name["poison_sys_modules"], sqrt,
            by_name["alarm_left_behind"], sleepy,  # the alarm would kill the sleeper
        ])
    assert [result.answer for result in results[1::2]] == [4.0, 5, 5, 4.0, 5]
    assert all(result.error is None for result in results[1::2])


def test_no_stray_processes_after_close() -> None:
    executor = ProgramExecutor(timeout_s=1.0, workers=2)
    executor.run(["def solution():\n    while True:\n        pass"] + [NORMAL_PROGRAMS[0][0]] * 10)
    pids = executor.pids
    assert len(pids) >= 2  # zygote + workers
    executor.close()
    executor.close()  # idempotent
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not [pid for pid in pids if _alive(pid)]
    with pytest.raises(RuntimeError):
        executor.run(["def solution():\n    return 1"])


def test_executor_survives_many_batches(executor: ProgramExecutor) -> None:
    for batch in range(5):
        results = executor.run([f"def solution():\n    return {batch} * {i}" for i in range(64)])
        assert [result.answer for result in results] == [batch * i for i in range(64)]
    assert math.isfinite(executor.timeout_s)


# -- command line -----------------------------------------------------------------------------------
def test_cli_prints_one_json_line_per_record(tmp_path: Path) -> None:
    records = [
        {"item_id": "a", "program": "def solution():\n    return 2 + 3\n\nprint('chatter')"},
        {"item_id": "b", "answer_cot": "def solution():\n    return sympy.Rational(1, 2)"},
        {"program": "def solution():\n    while True:\n        pass"},
    ]
    jsonl = tmp_path / "programs.jsonl"
    jsonl.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    as_list = tmp_path / "programs.json"
    as_list.write_text(json.dumps(records))
    for path in (jsonl, as_list):
        completed = subprocess.run(
            [sys.executable, "-m", "reft_exp.execute", str(path), "--timeout", "1", "--workers", "2"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True,
        )
        lines = [json.loads(line) for line in completed.stdout.splitlines()]
        assert lines == [
            {"answer": 5, "error": None, "item_id": "a"},
            {"answer": 0.5, "error": None, "item_id": "b"},
            {"answer": None, "error": "timeout"},
        ]


def test_executor_recovers_when_its_zygote_is_killed() -> None:
    with ProgramExecutor(workers=2) as fragile:
        assert_serves_normal_programs(fragile, repeats=1)
        zygote = fragile.pids[0]
        os.kill(zygote, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and Path(f"/proc/{zygote}").exists() and fragile._zygote.alive():
            time.sleep(0.01)
        assert_serves_normal_programs(fragile, repeats=2)
        assert fragile.pids[0] != zygote


def test_sandbox_processes_die_with_the_caller(tmp_path: Path) -> None:
    """If the caller is SIGKILLed (no close(), no atexit), zygote and workers must not linger."""
    script = tmp_path / "caller.py"
    script.write_text(
        "import json, os, signal\n"
        "from reft_exp.execute import ProgramExecutor\n"
        "executor = ProgramExecutor(workers=2)\n"
        "executor.run(['def solution():\\n    return 1'] * 20)\n"
        "executor.start()\n"  # a worker retired at the end of the batch (work stealing under load) comes back
        "print(json.dumps(executor.pids), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    completed = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == -signal.SIGKILL
    pids = json.loads(completed.stdout)
    assert len(pids) == 3
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not [pid for pid in pids if _alive(pid)]


def test_interpreter_below_a_private_tmpfs_dir_stays_usable() -> None:
    """CI may clone the repo and create its .venv under /tmp, which the sandbox covers with a private
    tmpfs: the interpreter's directories there must stay visible (read-only) to zygote and workers."""
    base = Path(tempfile.mkdtemp(prefix="reft_venv_", dir="/tmp"))
    try:
        base.chmod(0o755)  # like a git clone: readable by the unprivileged workers
        venv = base / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        python = venv / "bin" / "python"
        site = Path(subprocess.run(
            [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip())
        assert base in site.parents
        (site / "reft_tmp_probe.py").write_text("VALUE = 41\n")  # imported by the preamble (zygote)
        (site / "reft_tmp_lazy.py").write_text("VALUE = 1\n")  # imported lazily inside a worker
        # This interpreter's packages (sympy, numpy, reft_exp itself) for the venv, after its own.
        parent_paths = [str(REPO_ROOT)] + [entry for entry in sys.path if entry and os.path.isdir(entry)]
        (site / "reft_parent_paths.pth").write_text("\n".join(parent_paths) + "\n")
        script = (
            "import json\n"
            "from reft_exp.execute import ProgramExecutor\n"
            "preamble = 'import math\\nimport sympy\\nimport reft_tmp_probe\\n'\n"
            "with ProgramExecutor(timeout_s=10, workers=1, preamble=preamble) as executor:\n"
            "    results = executor.run([\n"
            "        'def solution():\\n    return reft_tmp_probe.VALUE + 1',\n"
            "        'def solution():\\n    import reft_tmp_lazy\\n    return reft_tmp_lazy.VALUE + sympy.Integer(1)',\n"
            "    ])\n"
            "    print(json.dumps({'results': [[r.answer, r.error] for r in results],\n"
            "                      'layers': executor.layers}))\n"
        )
        completed = subprocess.run([str(python), "-I", "-c", script], cwd="/", capture_output=True,
                                   text=True, timeout=180)
        assert completed.returncode == 0, completed.stderr[-3000:]
        report = json.loads(completed.stdout)
        assert report["results"] == [[42, None], [2, None]], report
        layers = report["layers"]
        if IS_ROOT and layers["filesystem"].startswith("on"):
            assert str(venv) in layers["filesystem"], layers  # kept visible below the private /tmp
            assert layers["privileges"].startswith("on"), layers
    finally:
        shutil.rmtree(base, ignore_errors=True)
