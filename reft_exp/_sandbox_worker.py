"""Zygote and workers of :mod:`reft_exp.execute` (private).  Started as a script,
``python -I -B _sandbox_worker.py CONFIG_JSON``, inside bubblewrap (``executor.isolation=strict``) or
directly (``none``); ``-I`` keeps the ``reft_exp`` package (and torch) out of it.

The zygote imports the preamble's modules once and forks a worker per request of the caller; a worker
runs many programs, one at a time.  What bubblewrap gives (see ``execute.bwrap_command``): no network,
own PID/IPC/UTS namespaces, no capabilities, a read-only view of only the system and interpreter
directories, private /tmp, dies with the caller.  What a worker adds itself: a libseccomp filter that
fails process creation, signals, sockets, ptrace, namespaces and mounts with EPERM (by syscall NAME, so
the same list serves x86-64 and aarch64), rlimits, its own session, stdio on /dev/null, an output cap,
and a static screen: a program that is not plain arithmetic code retires its worker after it runs.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import dis
import io
import json
import numbers
import os
import resource
import shutil
import signal
import socket
import struct
import sys
import tempfile
import types

# Wire format shared with execute.py: 4-byte big-endian length + UTF-8 JSON.
HEADER = struct.Struct(">I")
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # a request carries one program
MAX_ERROR_CHARS = 300  # error strings are for humans and logs
MAX_ANSWER_INT_BITS = 13_000  # ~3,900 digits: CPython refuses str() of ints beyond 4,300 digits
RLIMIT_FSIZE_BYTES = 16 * 1024 * 1024  # largest file a program may write into its working directory
RLIMIT_NOFILE = 64  # channel + stdio + the few files a lazy import opens
RLIMIT_STACK_BYTES = 8 * 1024 * 1024  # deep C recursion ends in SIGSEGV, not in swap
RSS_RECYCLE_FRACTION = 0.5  # retire a worker whose peak RSS reached this share of its memory limit
PR_SET_PDEATHSIG = 1
# Syscalls a worker may not make (EPERM); plain computation needs none of them.  Names libseccomp does
# not know on this architecture (fork/vfork on aarch64 ...) are skipped.
DENIED_SYSCALLS = (
    "fork", "vfork", "clone", "clone3", "execve", "execveat", "kill", "tkill", "tgkill",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal", "pidfd_getfd",
    "socket", "socketpair", "connect", "accept", "accept4", "bind", "listen", "ptrace",
    "process_vm_readv", "process_vm_writev", "prctl", "unshare", "setns", "mount", "umount2",
    "pivot_root", "chroot", "mount_setattr", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig",
    "fspick", "add_key", "request_key", "keyctl", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "name_to_handle_at", "open_by_handle_at",
)
# Static screen: names and opcodes beyond plain word-problem code (files, processes, the interpreter,
# process-wide state).  Such a program still runs, contained, but its worker is retired after it, so
# nothing it changed (monkeypatched modules, alarms, ...) reaches the next program.
SCREEN_DENIED_NAMES = frozenset((
    "open exec eval compile getattr setattr delattr globals locals vars breakpoint input exit quit help "
    "memoryview attrgetter methodcaller sys os posix subprocess socket ctypes builtins gc inspect importlib "
    "signal resource threading multiprocessing concurrent asyncio io pathlib shutil tempfile pty mmap types "
    "code codeop pickle marshal shelve dbm sqlite3 atexit faulthandler runpy site sysconfig weakref fcntl "
    "termios select selectors urllib http ftplib smtplib webbrowser platform pdb trace tracemalloc warnings "
    "logging locale operator seed setstate setcontext getcontext localcontext seterr seterrcall "
    "set_printoptions setrecursionlimit init_printing init_session clear_cache set_global_settings register "
    "mkfifo mknod").split())
SCREEN_DENIED_OPCODES = bytes(dis.opmap[name] for name in ("STORE_ATTR", "DELETE_ATTR"))
PREWARM_MODULES = ("numpy", "fractions", "decimal", "statistics", "itertools", "functools", "collections",
                   "datetime", "cmath", "random")


class OutputLimitExceeded(Exception):
    """Raised by the stdout/stderr sink once a program printed more than its budget."""


class CappedSink(io.TextIOBase):
    """sys.stdout/stderr of a worker: discards text, counts bytes, fails past the budget."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget, self.used = budget, 0

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.used += len(text.encode("utf-8", "surrogatepass"))
        if self.used > self.budget:
            raise OutputLimitExceeded
        return len(text)

    def writable(self) -> bool:
        return True


def build_seccomp_filter():
    """A libseccomp filter object (loaded by each worker after fork) and a description of it."""
    import pyseccomp  # ctypes over the system's libseccomp.so.2

    filt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    skipped = []
    for name in DENIED_SYSCALLS:
        try:
            filt.add_rule(pyseccomp.ERRNO(1), name)  # 1 = EPERM
        except (ValueError, RuntimeError, OSError):
            skipped.append(name)  # not a syscall on this architecture
    note = f" (not on this architecture: {', '.join(skipped)})" if skipped else ""
    return filt, f"on: {len(DENIED_SYSCALLS) - len(skipped)} syscalls fail with EPERM in workers{note}"


def screen(code: types.CodeType) -> str | None:
    """Why a compiled program is not plain (see SCREEN_DENIED_NAMES), or None if it is."""
    stack = [code]
    while stack:
        co = stack.pop()
        for name in co.co_names:
            if name in SCREEN_DENIED_NAMES or name.startswith("_"):
                return f"uses {name!r}"
        if any(op in co.co_code[::2] for op in SCREEN_DENIED_OPCODES):
            return "stores attributes"
        stack.extend(const for const in co.co_consts if isinstance(const, types.CodeType))
    return None


def to_plain(value: object, max_chars: int) -> object:
    """solution()'s value as None/bool/int/float/str (rules in execute.py's docstring)."""
    if value is None or type(value) in (bool, float):
        return value
    if isinstance(value, numbers.Integral):
        value = int(value)
        if value.bit_length() > MAX_ANSWER_INT_BITS:
            raise OutputLimitExceeded
        return value
    if isinstance(value, str):
        text = str.__str__(value)
    else:
        try:
            return float(value)  # sympy/numpy numbers, Fraction, Decimal, 0-d arrays ...
        except Exception:  # noqa: BLE001 - anything non-numeric falls back to its text form
            text = str.__str__(str(value))
    if len(text) > max_chars:
        raise OutputLimitExceeded
    return text


def describe(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "memory"
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a hostile __str__ must not break error reporting
        message = "<unprintable>"
    return (f"exception: {type(exc).__name__}: {message}" if message
            else f"exception: {type(exc).__name__}")[:MAX_ERROR_CHARS]


class Worker:
    def __init__(self, chan_fd: int, workdir: str, config: dict, seccomp) -> None:
        self.chan_fd, self.workdir, self.config, self.seccomp = chan_fd, workdir, config, seccomp

    def setup(self, zygote_pid: int) -> None:
        os.setsid()  # killpg(0) and terminal signals reach only this worker
        os.closerange(3, self.chan_fd)  # the zygote's control socket above all
        os.closerange(self.chan_fd + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        os.chdir(self.workdir)
        os.environ["TMPDIR"] = os.environ["HOME"] = self.workdir
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over-size writes fail with EFBIG instead
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != zygote_pid:
            os._exit(1)  # die with the zygote (and do not outlive one that died already)
        with open("/proc/self/statm") as statm:
            self.memory_limit = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        self.memory_limit += self.config["memory_mb"] * 1024 * 1024
        for which, value in ((resource.RLIMIT_AS, self.memory_limit), (resource.RLIMIT_DATA, self.memory_limit),
                             (resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, RLIMIT_FSIZE_BYTES),
                             (resource.RLIMIT_NOFILE, RLIMIT_NOFILE), (resource.RLIMIT_MEMLOCK, 0),
                             (resource.RLIMIT_STACK, RLIMIT_STACK_BYTES), (resource.RLIMIT_NPROC, 0)):
            hard = resource.getrlimit(which)[1]
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
        if self.seccomp is not None:
            self.seccomp.load()  # also sets no_new_privs
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        self.sink = sys.stdout = sys.stderr = sys.__stdout__ = sys.__stderr__ = CappedSink(0)
        sys.stdin = sys.__stdin__ = io.StringIO()
        self.builtins = dict(builtins.__dict__)
        self.recursion_limit = sys.getrecursionlimit()
        self.preamble = self.config["preamble"]
        self.preamble_code = compile(self.preamble, "<preamble>", "exec")
        self.call_code = compile("solution()", "<call>", "eval")
        self.chan = socket.socket(fileno=self.chan_fd)

    def serve(self) -> None:
        while True:
            header = self.chan.recv(HEADER.size, socket.MSG_WAITALL)
            if len(header) < HEADER.size or HEADER.unpack(header)[0] > MAX_REQUEST_BYTES:
                return  # the caller went away
            request = json.loads(self.chan.recv(HEADER.unpack(header)[0], socket.MSG_WAITALL))
            reply = self.execute(request["src"], request["id"])
            if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 > self.memory_limit * RSS_RECYCLE_FRACTION:
                reply["recycle"] = True
            try:
                self.send(reply)
            except (ValueError, TypeError):  # e.g. an int that JSON cannot encode
                self.send(dict(reply, answer=None, error="output too large", recycle=True))
            if reply["recycle"]:
                return  # the caller reaps us through the zygote and starts a fresh worker

    def send(self, message: dict) -> None:
        payload = json.dumps(message).encode()
        self.chan.sendall(HEADER.pack(len(payload)) + payload)

    def execute(self, source: str, request_id: int) -> dict:
        """Run one program as the official code does (src/python_engine.py:34-40): the program (preamble lines
        included) is exec'd with a separate locals dict, then eval("solution()") in the same pair."""
        self.sink.budget, self.sink.used = self.config["max_output_bytes"], 0
        answer, error, recycle = None, None, False
        program_globals: dict = {"__builtins__": self.builtins.copy()}  # `__builtins__[...] =` stays local
        program_locals: dict = {}
        try:
            code = compile(self.preamble + source, "<program>", "exec")
            recycle = screen(code) is not None
            exec(self.preamble_code, program_globals)  # modules as globals, as src/python_engine.py:35-36
            exec(code, program_globals, program_locals)
            if "solution" not in program_locals and "solution" not in program_globals:
                error = "no solution()"
            else:
                answer = to_plain(eval(self.call_code, program_globals, program_locals),
                                  self.config["max_output_bytes"])
        except OutputLimitExceeded:
            answer, error = None, "output too large"
        except BaseException as exc:  # noqa: BLE001 - SystemExit, MemoryError, anything
            answer, error = None, describe(exc)
            recycle = recycle or error == "memory"
            del exc
        finally:
            program_globals.clear()  # finalizers run now, within this program's time
            program_locals.clear()
        if self.sink.used > self.sink.budget:
            answer, error = None, "output too large"
        if sys.stdout is not self.sink or sys.stderr is not self.sink or sys.getrecursionlimit() != self.recursion_limit:
            recycle = True
        return {"id": request_id, "answer": answer, "error": error, "recycle": recycle}


def zygote(config: dict) -> None:
    ctrl = socket.socket(fileno=config["ctrl_fd"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # terminal signals are the caller's business
    layers = {}
    try:
        seccomp, layers["seccomp"] = build_seccomp_filter() if config["seccomp"] else (None, "off: isolation=none")
        exec(compile(config["preamble"], "<preamble>", "exec"), {})  # import what programs use, once
        for name in PREWARM_MODULES:
            try:
                __import__(name)
            except Exception:  # noqa: BLE001,S112 - optional accelerators only
                continue
        base = tempfile.mkdtemp(prefix="reft_exec_")
    except Exception as exc:  # noqa: BLE001 - reported to the caller, which fails in one line
        ctrl.send(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}).encode())
        return
    ctrl.send(json.dumps({"ok": True, "pid": os.getpid(), "layers": layers}).encode())
    workers: dict[int, str] = {}  # pid -> working directory
    try:
        while True:
            msg, fds, _flags, _addr = socket.recv_fds(ctrl, 65536, 1)
            if not msg:
                break  # the caller closed the channel or died
            request = json.loads(msg)
            try:
                if request["op"] == "spawn":
                    workdir, zygote_pid = tempfile.mkdtemp(dir=base), os.getpid()
                    pid = os.fork()
                    if pid == 0:
                        status = 1
                        try:
                            ctrl.close()
                            worker = Worker(fds[0], workdir, config, seccomp)
                            worker.setup(zygote_pid)
                            worker.serve()
                            status = 0
                        finally:
                            os._exit(status)
                    workers[pid] = workdir
                    reply = {"pid": pid}
                else:  # kill: SIGKILL a worker's process group, reap it; never a pid we do not own
                    pid = int(request["pid"])
                    reply = {"status": None}
                    if pid in workers:
                        for kill in (os.killpg, os.kill):
                            with contextlib.suppress(OSError):
                                kill(pid, signal.SIGKILL)
                        reply["status"] = os.waitpid(pid, 0)[1]
                        shutil.rmtree(workers.pop(pid), ignore_errors=True)
            except OSError as exc:  # fork() failing under memory pressure ...: tell the caller
                reply = {"error": repr(exc)}
            finally:
                for fd in fds:
                    os.close(fd)
            ctrl.send(json.dumps(reply).encode())
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    zygote(json.loads(sys.argv[1]))
