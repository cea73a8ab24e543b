"""Sandboxed, fast execution of model-written Python programs (P-CoT answers and rewards).

Upstream ReFT (``src/python_engine.py``) cuts the program out of the completion, prepends
``import math`` / ``import sympy``, runs it in a pebble process pool with a timeout and takes the
return value of ``solution()`` as the answer; any exception or timeout gives ``None``.  It has no
sandbox beyond the process.  During RL the policy writes arbitrary code (endless loops, memory
bombs, file and process access, ...), and we run as root, so this module keeps upstream's semantics
but executes every program in a layered sandbox, fast enough for rollouts:

    from reft_exp.execute import ProgramExecutor, program_from_completion
    with ProgramExecutor(timeout_s=10) as executor:
        results = executor.run([program_from_completion(c) for c in completions])
        answers = [r.answer for r in results]          # None on any failure, r.error says why

Design (details and the list of defence layers in ``reft_exp/_sandbox_worker.py``):

* a *zygote* process (fresh interpreter, sympy/numpy imported once, host filesystem read-only and
  network cut off by namespaces where the kernel allows it) forks *workers* on request;
* a worker drops to uid ``nobody``, sets rlimits, a seccomp filter and an audit hook, then executes
  many programs one at a time (no fork per program: that is what makes it fast);
* this process sends one program at a time to each worker and enforces the wall-clock limit itself,
  with SIGKILL through the zygote, so no signal trick inside the program can stop it;
* a worker that died, timed out or ran anything but plain arithmetic code is replaced by a fresh
  fork; a crash or out-of-memory in a worker that had already run other programs is retried once in a
  fresh worker, so a program is only ever charged for its own misbehaviour.

Answer conversion (``ExecResult.answer``): ``None``/``bool``/``int``/``float``/``str`` are returned as
they are; other integral numbers (numpy/sympy integers) become ``int``; anything ``float()`` accepts
(sympy Rational/Float/sqrt(2), numpy floats, Fraction, Decimal, 0-d arrays, ``b"3"``) becomes
``float``, matching upstream's ``floatify``; everything else (lists, symbolic expressions, complex
numbers ...) becomes ``str(value)``, which keeps upstream's MathQA ``str(res)`` behaviour.  A program
whose ``solution()`` returns ``None`` gives ``answer=None`` with ``error=None``.

Error strings: ``"timeout"``, ``"memory"``, ``"output too large"``, ``"no solution()"``,
``"program too large"``, and the prefixes ``"exception: <Type>: <message>"``, ``"blocked: <what>"``
(the sandbox refused an operation, or the program monkeypatched shared modules) and
``"crashed: <how>"`` (the worker process died).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reft_exp import _sandbox_worker as _proto

DEFAULT_TIMEOUT_S = 10.0  # upstream's per-program limit for evaluation
DEFAULT_MEMORY_MB = 1024  # address space a program may add on top of the warm interpreter
DEFAULT_MAX_OUTPUT_BYTES = 65536  # printed output (stdout+stderr) and size of a str answer
DEFAULT_PREAMBLE = "import math\nimport sympy\n"  # upstream prepends exactly these two lines
DEFAULT_MAX_PROGRAMS_PER_WORKER = 2000  # recycle even well-behaved workers now and then (leaks)
ZYGOTE_START_TIMEOUT_S = 180.0  # first start imports sympy+numpy; slow disks and cold caches
CONTROL_TIMEOUT_S = 60.0  # a fork or a kill+reap in the zygote
SEND_TIMEOUT_S = 10.0  # writing one request into an idle worker's socket
ZYGOTE_EXIT_TIMEOUT_S = 10.0
# Programs queued per worker.  With 2 the next request is already in the worker's socket when the
# current program returns, so a worker never idles waiting for this process (+~30% throughput on
# 2 cores).  Safe because a worker announces *before* running a non-plain program that it will
# retire, and its queued requests are then re-sent to other workers.
PIPELINE_DEPTH = 2
# A queued program whose worker has been busy this long with the one before it is re-queued to
# another worker (typical programs take ~0.1 ms; this only triggers behind slow or hanging ones).
STEAL_AFTER_S = 0.05
_RECV_CHUNK_BYTES = 1 << 16
_TOKEN_FIELD_BYTES = 64  # '{"id": <63-bit int>, ' spliced in front of the payload
_REPLY_SLACK_BYTES = 4096  # reply = answer (<= max_output_bytes as JSON-escaped str) + small fields
_JSON_ESCAPE_FACTOR = 6  # worst case: every character JSON-escaped as \uXXXX
_WORKER_SCRIPT = Path(_proto.__file__).resolve()


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: the converted return value of ``solution()`` or why there is none."""

    answer: object | None
    error: str | None


def program_from_completion(text: str) -> str:
    """Cut the program out of a completion with upstream's rule (``process_code`` in python_engine).

    ``sys.exit`` is replaced by ``print`` (so a program cannot end early), then lines are kept up to
    the first blank line (the model ends its program with one; what follows is chatter).  The text
    is stripped first, as upstream's callers do, so a leading newline does not empty the program.
    The ``import math`` / ``import sympy`` lines are *not* added here: ``ProgramExecutor`` prepends
    its ``preamble``.
    """
    kept: list[str] = []
    for line in text.strip().replace("sys.exit", "print").split("\n"):
        if not line.startswith("def solution") and line.strip() == "":
            break
        kept.append(line)
    return "\n".join(kept)


def _describe_wait_status(status: int | None) -> str:
    if status is None:
        return "crashed: worker lost"
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"crashed: killed by {name}"
    return f"crashed: exited with status {os.WEXITSTATUS(status)}"


class _Zygote:
    """Client side of the zygote: start it, ask it to fork or kill+reap workers, stop it."""

    def __init__(self, config: dict, isolate: bool) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = dict(config, ctrl_fd=theirs.fileno(), isolate=isolate)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            # One thread per library: workers may not create threads (RLIMIT_NPROC=0, seccomp).
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        }
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", str(_WORKER_SCRIPT), json.dumps(config)],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                start_new_session=True, env=env, cwd="/",
            )
        finally:
            theirs.close()
        self.sock = ours
        self.sock.settimeout(ZYGOTE_START_TIMEOUT_S)
        hello = self._receive()
        if not hello.get("ok"):
            raise RuntimeError(f"sandbox zygote failed to start: {hello}")
        self.pid: int = hello["pid"]
        self.layers: dict[str, str] = hello["layers"]
        self.sock.settimeout(CONTROL_TIMEOUT_S)

    def _receive(self) -> dict:
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("sandbox zygote died (see its stderr above)")
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
        """SIGKILL a worker (and its process group), reap it and return its wait status.

        None if the status is unknown: the worker belonged to a zygote that has died (the worker
        then died too, through its parent-death signal).
        """
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
            self.process.kill()  # workers follow through PR_SET_PDEATHSIG
            self.process.wait()


@dataclass
class _Task:
    """A program sent to a worker.  ``stolen``: re-queued elsewhere; this copy's result is ignored."""

    index: int
    token: int
    stolen: bool = False


class _Worker:
    """Our handle on one worker: socket, receive buffer and the programs sent to it, in order."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.buffer = bytearray()
        self.programs_run = 0
        self.tasks: deque[_Task] = deque()  # head is running, the rest wait in the socket
        self.started = math.inf  # when the head task was sent or became head
        self.deadline = math.inf  # of the head task
        self.retiring = False  # discard after the head task, whatever the worker says


class ProgramExecutor:
    """Runs batches of programs in a pool of sandboxed workers; reusable, not thread-safe.

    Args:
        timeout_s: wall-clock limit per program (compile + run + converting the answer).
        memory_mb: address space a program may allocate on top of the warm interpreter.
        workers: number of worker processes (default: CPU count).
        max_output_bytes: budget for printed output and for a string answer.
        preamble: source prepended to every program (upstream: ``import math`` + ``import sympy``).
        max_programs_per_worker: retire a worker after this many programs even if it behaved.
        isolate: use the kernel layers (namespaces, read-only filesystem, seccomp).
        drop_privileges: run workers as ``nobody`` when this process is root.
        audit_hook: install the Python audit hook in workers.
            The last three exist so tests can show what each group of layers does on its own;
            leave them on.
    """

    def __init__(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_mb: int = DEFAULT_MEMORY_MB,
        workers: int | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        preamble: str = DEFAULT_PREAMBLE,
        *,
        max_programs_per_worker: int = DEFAULT_MAX_PROGRAMS_PER_WORKER,
        isolate: bool = True,
        drop_privileges: bool = True,
        audit_hook: bool = True,
    ) -> None:
        if min(timeout_s, memory_mb, max_output_bytes, max_programs_per_worker, workers or 1) <= 0:
            raise ValueError("timeout_s, memory_mb, workers, max_output_bytes and max_programs_per_worker "
                             "must be positive")
        self.timeout_s = float(timeout_s)
        self.max_output_bytes = int(max_output_bytes)
        self.num_workers = int(workers) if workers else (os.cpu_count() or 1)
        self._owner_pid = os.getpid()
        self._workers: list[_Worker] = []
        self._zygote: _Zygote | None = None
        self._selector = selectors.DefaultSelector()
        self._max_reply_bytes = _JSON_ESCAPE_FACTOR * self.max_output_bytes + _REPLY_SLACK_BYTES
        self._zygote_config = {
            "preamble": preamble,
            "memory_mb": int(memory_mb),
            "max_output_bytes": self.max_output_bytes,
            "max_programs_per_worker": int(max_programs_per_worker),
            "drop_privileges": bool(drop_privileges),
            "audit_hook": bool(audit_hook),
        }
        self._isolate = isolate
        self._zygote = _Zygote(self._zygote_config, isolate=isolate)

    # -- public API ------------------------------------------------------------------------------
    @property
    def layers(self) -> dict[str, str]:
        """Which kernel-level defence layers the zygote could enable ("on: ..." / "off: why")."""
        return dict(self._zygote.layers) if self._zygote else {}

    @property
    def pids(self) -> list[int]:
        """Process ids of the zygote and live workers (for tests and debugging)."""
        if self._zygote is None:
            return []
        return [self._zygote.process.pid] + [worker.pid for worker in self._workers]

    def start(self) -> ProgramExecutor:
        """Spawn workers up to ``workers`` now instead of at the next ``run`` (which also replaces
        workers retired by the previous batch: crashed, timed out, or still busy with a stolen copy)."""
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
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown; nothing sensible left to do
            pass

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
            while batch.pending or batch.retry or self._outstanding():
                self._dispatch(batch)
                busy = [worker for worker in self._workers if worker.tasks]
                if not busy:
                    continue
                wake = min(worker.deadline for worker in busy)
                if self._free_capacity() > 0:
                    wake = min([wake] + [w.started + STEAL_AFTER_S for w in busy if self._stealable(w)])
                for key, _ in self._selector.select(max(0.0, wake - time.monotonic())):
                    if key.data in self._workers:  # may have been discarded earlier in this loop
                        self._on_readable(key.data, batch)
                now = time.monotonic()
                for worker in [w for w in self._workers if w.tasks and w.deadline <= now]:
                    self._retire(worker, batch, head_result=ExecResult(None, "timeout"))
                self._steal(batch, now)
        finally:
            # Normally only workers still running stolen copies; after an exception (Ctrl-C ...)
            # every busy worker: their replies must not leak into the next batch.
            for worker in [w for w in self._workers if w.tasks]:
                self._retire(worker, batch)
        return [result if result is not None else ExecResult(None, "crashed: lost") for result in batch.results]

    # -- internals -------------------------------------------------------------------------------
    def _outstanding(self) -> bool:
        """Whether any worker still runs or holds a program whose result this batch needs."""
        return any(not task.stolen for worker in self._workers for task in worker.tasks)

    def _steal(self, batch: _Batch, now: float) -> None:
        """Re-queue programs stuck behind a slow one, but only into free capacity (a stolen program
        still runs in its original worker later; its result there is ignored)."""
        free = self._free_capacity()
        for worker in self._workers:
            if free <= 0:
                return
            if self._stealable(worker) and worker.started + STEAL_AFTER_S <= now:
                for task in list(worker.tasks)[1:]:
                    if not task.stolen and free > 0:
                        task.stolen = True
                        batch.pending.appendleft(task.index)
                        free -= 1

    def _free_capacity(self) -> int:
        """Workers that could start a program right now (idle ones and ones not yet spawned)."""
        idle = sum(1 for worker in self._workers if not worker.tasks and not worker.retiring)
        return max(0, self.num_workers - len(self._workers)) + idle

    @staticmethod
    def _stealable(worker: _Worker) -> bool:
        return any(not task.stolen for task in list(worker.tasks)[1:])

    def _dispatch(self, batch: _Batch) -> None:
        """Hand out pending programs: up to PIPELINE_DEPTH per worker, retries to fresh workers."""
        while batch.retry:
            worker = self._spawn()
            worker.retiring = True  # a retry gets a worker of its own, used once
            self._send(worker, batch.retry.popleft(), batch)
        while len(self._workers) < self.num_workers and batch.pending:
            self._send(self._spawn(), batch.pending.popleft(), batch)
        for depth in range(1, PIPELINE_DEPTH + 1):
            for worker in self._workers:
                if batch.pending and not worker.retiring and len(worker.tasks) < depth:
                    self._send(worker, batch.pending.popleft(), batch)

    def _send(self, worker: _Worker, index: int, batch: _Batch) -> None:
        payload = batch.payload(index)
        if len(payload) + _TOKEN_FIELD_BYTES > _proto._MAX_REQUEST_BYTES:
            batch.results[index] = ExecResult(None, "program too large")
            return
        token = secrets.randbits(63)
        message = b'{"id": %d, ' % token + payload[1:]  # splice the token into the encoded payload
        if not worker.tasks:
            worker.started = time.monotonic()
            worker.deadline = worker.started + self.timeout_s
        worker.tasks.append(_Task(index, token))
        try:
            worker.sock.sendall(_proto._HEADER.pack(len(message)) + message)
        except OSError:
            pass  # the worker is dead or hung; EOF or the deadline deals with it

    def _spawn(self) -> _Worker:
        if not self._zygote.alive():
            # Killed from outside (OOM killer, an operator): its workers died with it (parent-death
            # signal) and show up as EOFs, handled like any crash.  Start a new one.
            self._zygote.close()
            self._zygote = _Zygote(self._zygote_config, isolate=self._isolate)
        pid, sock = self._zygote.spawn()
        sock.settimeout(SEND_TIMEOUT_S)
        worker = _Worker(pid, sock)
        self._workers.append(worker)
        self._selector.register(sock, selectors.EVENT_READ, worker)
        return worker

    def _retire(self, worker: _Worker, batch: _Batch, head_result: ExecResult | None = None) -> int | None:
        """Kill and reap a worker through the zygote; its head gets ``head_result``, the others go back
        to the front of the queue (they did nothing wrong).  Returns the worker's wait status."""
        self._selector.unregister(worker.sock)
        worker.sock.close()
        self._workers.remove(worker)
        tasks = list(worker.tasks)
        worker.tasks.clear()
        if tasks and head_result is not None:
            head = tasks.pop(0)
            if not head.stolen:
                batch.results[head.index] = head_result
        for task in reversed(tasks):
            if not task.stolen:
                batch.pending.appendleft(task.index)
        return self._zygote.kill(worker.pid)

    def _on_readable(self, worker: _Worker, batch: _Batch) -> None:
        try:
            data = worker.sock.recv(_RECV_CHUNK_BYTES)
        except OSError:
            data = b""
        if not data:  # EOF: the worker died (crash, os._exit, killed by the kernel ...)
            head = worker.tasks.popleft() if worker.tasks else None
            status = self._retire(worker, batch)
            if head is not None and not head.stolen:
                index = head.index
                if worker.programs_run > 0 and index not in batch.retried:
                    batch.retried.add(index)  # maybe an earlier program's doing: judge it afresh
                    batch.retry.append(index)
                else:
                    batch.results[index] = ExecResult(None, _describe_wait_status(status))
            return
        worker.buffer += data
        header_size = _proto._HEADER.size
        while worker in self._workers and len(worker.buffer) >= header_size:
            (size,) = _proto._HEADER.unpack_from(worker.buffer)
            if size > self._max_reply_bytes:
                self._retire(worker, batch, ExecResult(None, "crashed: oversized reply from worker"))
                return
            if len(worker.buffer) < header_size + size:
                return
            body = bytes(worker.buffer[header_size:header_size + size])
            del worker.buffer[:header_size + size]
            self._on_frame(worker, body, batch)

    def _on_frame(self, worker: _Worker, body: bytes, batch: _Batch) -> None:
        """Validate one frame strictly (it comes from a process running untrusted code) and act on it.

        Frames are either the pre-execution notice ``{"id", "notice": "retire"}``, sent by the worker
        after screening and before running a program that is not plain, or the reply
        ``{"id", "answer", "error", "recycle"}``.  Both must carry the head task's token.
        """
        head = worker.tasks[0] if worker.tasks else None
        try:
            frame = json.loads(body)
        except (ValueError, RecursionError):
            frame = None
        if head is None or not isinstance(frame, dict) or frame.get("id") != head.token:
            self._retire(worker, batch, ExecResult(None, "crashed: malformed reply from worker"))
            return
        if frame.get("notice") == "retire" and len(frame) == 2:
            if not worker.retiring:
                # The program may read the requests queued behind it: resend those elsewhere.
                worker.retiring = True
                while len(worker.tasks) > 1:
                    task = worker.tasks.pop()
                    if not task.stolen:
                        batch.pending.appendleft(task.index)
            return
        answer, error, recycle = frame.get("answer"), frame.get("error"), frame.get("recycle")
        if not (
            (answer is None or type(answer) in (bool, int, float, str))
            and (error is None or isinstance(error, str))
            and isinstance(recycle, bool)
        ):
            self._retire(worker, batch, ExecResult(None, "crashed: malformed reply from worker"))
            return
        index = head.index
        if error is not None:
            answer, error = None, error[: _proto._MAX_ERROR_CHARS]
        if head.stolen:
            pass  # its copy elsewhere decides
        elif error == "memory" and worker.programs_run > 0 and index not in batch.retried:
            batch.retried.add(index)  # earlier programs may have held the memory: retry fresh
            batch.retry.append(index)
        else:
            batch.results[index] = ExecResult(answer, error)
        worker.tasks.popleft()
        worker.programs_run += 1
        if recycle or worker.retiring:
            self._retire(worker, batch)
        elif worker.tasks:
            worker.started = time.monotonic()
            worker.deadline = worker.started + self.timeout_s


class _Batch:
    """Book-keeping of one ``run()`` call."""

    def __init__(self, programs: Sequence[str]) -> None:
        self.programs = programs
        self.results: list[ExecResult | None] = [None] * len(programs)
        self.pending: deque[int] = deque(range(len(programs)))
        self.retry: deque[int] = deque()  # programs to re-run in a fresh worker
        self.retried: set[int] = set()
        self._payloads: dict[int, bytes] = {}

    def payload(self, index: int) -> bytes:
        """JSON request body without the token, encoded once even if the program is resent."""
        if index not in self._payloads:
            self._payloads[index] = json.dumps({"src": self.programs[index]}, ensure_ascii=False).encode()
        return self._payloads[index]


def _load_records(path: Path) -> list[object]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: execute the programs of a JSON list / JSONL file and print one JSON line per record."""
    parser = argparse.ArgumentParser(
        prog="python -m reft_exp.execute",
        description="Run P-CoT programs (field 'program' or 'answer_cot') in the sandbox and print "
        "one JSON line {answer, error} per record.",
    )
    parser.add_argument("file", type=Path, help="JSON list or JSONL of records (or of plain strings)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per program")
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--raw", action="store_true",
                        help="run the field as is instead of cutting it with program_from_completion")
    args = parser.parse_args(argv)

    records = _load_records(args.file)
    programs = []
    for number, record in enumerate(records):
        if isinstance(record, str):
            text = record
        elif isinstance(record, dict) and isinstance(record.get("program", record.get("answer_cot")), str):
            text = record.get("program", record.get("answer_cot"))
        else:
            parser.error(f"record {number} has no string field 'program' or 'answer_cot'")
        programs.append(text if args.raw else program_from_completion(text))
    with ProgramExecutor(timeout_s=args.timeout, memory_mb=args.memory_mb, workers=args.workers) as executor:
        results = executor.run(programs)
    for record, result in zip(records, results):
        line = {"answer": result.answer, "error": result.error}
        if isinstance(record, dict) and "item_id" in record:
            line["item_id"] = record["item_id"]
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
