"""Zygote and worker processes of :mod:`reft_exp.execute` (private; run as a script, never imported).

Process tree::

    caller (trainer / pytest)              reft_exp.execute.ProgramExecutor
      └── zygote   (this file, root)       imports math+sympy(+numpy) once, forks workers on request
            ├── worker (uid nobody)        runs many programs, one at a time, until recycled
            └── worker ...

Why a zygote: the caller is usually a large multithreaded process (torch, CUDA) that must not fork, and
starting a fresh interpreter that imports sympy costs about a second.  The zygote pays that once; a
``fork()`` of it yields a ready worker in a few milliseconds, so killing a worker (timeout, crash,
suspicious program) is cheap.

This file is started as ``python -I _sandbox_worker.py CONFIG_JSON`` rather than ``-m reft_exp...`` so
the zygote does not import the ``reft_exp`` package (whose ``__init__`` may pull in torch).  It only
uses the standard library plus whatever the preamble imports.

Defence layers (each one alone would be bypassable; together they contain what we test for):

zygote, once, best effort (reported back as ``layers``):
  * new network + IPC namespace: only a downed loopback exists, so no connection can succeed;
  * new mount namespace in which the whole host filesystem is re-mounted read-only and the
    world-writable directories (/tmp, /var/tmp, /dev/shm, /run/lock) are replaced by private tmpfs
    mounts that vanish with the zygote.  Even a root process in there cannot change a host file.
    Directories the interpreter needs that lie below one of them (a ``.venv`` in a checkout under
    /tmp, this script's own directory) are bound back, read-only, at the same path;
worker, after ``fork()``:
  * own session/process group (``setsid``), so ``killpg(0, ...)`` hits only itself;
  * fds 0-2 on /dev/null and every inherited fd closed except its channel to the caller;
  * a throwaway working directory (inside the private tmpfs), ``TMPDIR``/``HOME`` point there;
  * rlimits: address space/data (baseline + ``memory_mb``), file size, open files, no core dumps,
    no locked memory; after dropping privileges ``RLIMIT_NPROC=0`` (no fork, no threads);
  * drop to uid/gid nobody (when started as root): cannot signal, ptrace or write anything owned by
    root, and the kernel enforces ``RLIMIT_NPROC`` for it;
  * ``PR_SET_PDEATHSIG(SIGKILL)`` (dies with the zygote), ``PR_SET_NO_NEW_PRIVS``, not dumpable;
  * a seccomp filter (x86-64) that fails fork/clone/exec, socket creation, kill/tkill, ptrace,
    namespace and mount calls, io_uring, bpf, prctl ... with EPERM, whatever Python does;
  * a ``sys.addaudithook`` hook, installed before any program runs, that refuses subprocess/exec/
    fork/kill/socket/ctypes/chdir/settrace/rlimit changes and file writes, removals, renames, chmod,
    chown ... outside the working directory, and records every refusal so that a program which
    catches the ``PermissionError`` still gets ``blocked: ...``;
  * stdout/stderr replaced by counting sinks (output cap), a fresh globals dict and a private copy of
    the builtins dict per program;
  * a static screen of each compiled program (names + opcodes): anything beyond plain arithmetic
    code (attribute stores, dunder access, ``open``/``eval``/``getattr``, ``sys``/``os``/... names,
    known global-state mutators) makes the worker retire after that program, so it cannot poison
    the programs that follow;
  * after each program, an identity fingerprint of builtins/math/sympy/... module namespaces: a
    program that monkeypatched them gets ``blocked: modified shared module state`` and the worker
    retires.
The caller (execute.py) adds: a wall-clock deadline per program enforced with SIGKILL (cannot be
caught or delayed by the program), strict validation of every reply (JSON only, never pickle, size
capped, per-task random token), and replacement of dead or retired workers.
"""

from __future__ import annotations

import builtins
import ctypes
import dis
import errno
import io
import json
import numbers
import operator
import os
import resource
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import types
from itertools import chain

# ---------------------------------------------------------------------------------------------------
# Wire format shared with execute.py: 4-byte big-endian length + UTF-8 JSON.
_HEADER = struct.Struct(">I")
_MAX_REQUEST_BYTES = 4 * 1024 * 1024  # a request carries one program; execute.py refuses bigger ones
_MAX_ERROR_CHARS = 300  # error strings are for humans and logs, not for data
# Largest int answer (~3,900 decimal digits): JSON goes through str(), which CPython refuses beyond
# 4,300 digits; and no word problem has such an answer.
_MAX_ANSWER_INT_BITS = 13_000
_WORKER_EXIT_FAILURE = 70  # exit status of a worker whose set-up failed (EX_SOFTWARE)

# Resource limits of a worker (besides the caller-chosen memory limit).
_RLIMIT_FSIZE_BYTES = 16 * 1024 * 1024  # largest file a program may write into its working dir
_RLIMIT_NOFILE = 64  # channel + stdio + the few files a lazy import opens
_RLIMIT_STACK_BYTES = 8 * 1024 * 1024  # the usual Linux default, enforced even if ours is unlimited
_PRIVATE_TMPFS_OPTIONS = b"size=64m,mode=1777"  # per-zygote tmpfs that replaces /tmp & co.
_PRIVATE_TMPFS_DIRS = (b"/tmp", b"/var/tmp", b"/dev/shm", b"/run/lock")
_EXPOSE_TMPFS_OPTIONS = b"size=1m,mode=755"  # covers e.g. /root, holds only mount points
_RSS_RECYCLE_FRACTION = 0.5  # retire a worker whose peak RSS reached this share of its memory limit

# Linux constants (not all exposed by the os module on Python 3.10/3.11).
_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND = 1, 2, 4, 32, 4096
_MS_REC, _MS_PRIVATE = 16384, 1 << 18
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID = 1, 2
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000
_SYS_MOUNT_SETATTR_X86_64 = 442
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP = 1, 4, 38, 22
_SECCOMP_MODE_FILTER = 2
_NOBODY_FALLBACK_ID = 65534

# Seccomp filter for x86-64: syscalls that fail with EPERM inside a worker.  Plain computation never
# needs any of them; the worker's own channel already exists (send/recv stay allowed).
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
_SECCOMP_DENIED_X86_64 = {
    "socket": 41, "connect": 42, "accept": 43, "bind": 49, "listen": 50, "socketpair": 53,
    "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "kill": 62, "ptrace": 101,
    "rt_sigqueueinfo": 129, "pivot_root": 155, "prctl": 157, "chroot": 161, "mount": 165,
    "umount2": 166, "tkill": 200, "tgkill": 234, "add_key": 248, "request_key": 249, "keyctl": 250,
    "unshare": 272, "accept4": 288, "name_to_handle_at": 303, "open_by_handle_at": 304, "rt_tgsigqueueinfo": 297, "perf_event_open": 298, "setns": 308,
    "process_vm_readv": 310, "process_vm_writev": 311, "bpf": 321, "execveat": 322,
    "userfaultfd": 323, "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438,
}

# ---------------------------------------------------------------------------------------------------
# Static screen.  A program is "plain" when its compiled code only does what word-problem programs do:
# arithmetic, local variables, calls into math/sympy/numpy & co.  Anything else still runs (with all
# runtime defences), but the worker is retired afterwards so that leftovers cannot reach later programs.
_SCREEN_DENIED_NAMES = frozenset(
    {
        # builtins that reach files, code objects or attributes by name
        "open", "exec", "eval", "compile", "getattr", "setattr", "delattr", "globals", "locals",
        "vars", "breakpoint", "input", "exit", "quit", "help", "memoryview", "attrgetter",
        "methodcaller",
        # modules that reach the process, the OS or the interpreter's internals
        "sys", "os", "posix", "subprocess", "socket", "ctypes", "builtins", "gc", "inspect",
        "importlib", "signal", "resource", "threading", "multiprocessing", "concurrent", "asyncio",
        "io", "pathlib", "shutil", "tempfile", "pty", "mmap", "types", "code", "codeop", "pickle",
        "marshal", "shelve", "dbm", "sqlite3", "atexit", "faulthandler", "runpy", "site", "sysconfig",
        "weakref", "fcntl", "termios", "select", "selectors", "urllib", "http", "ftplib", "smtplib",
        "webbrowser", "platform", "pdb", "trace", "tracemalloc", "warnings", "logging", "locale",
        "operator",
        # functions that change process-wide state seen by later programs
        "seed", "setstate", "setcontext", "getcontext", "localcontext", "seterr", "seterrcall",
        "set_printoptions", "setrecursionlimit", "init_printing", "init_session", "clear_cache",
        "set_global_settings", "register", "mkfifo", "mknod",
    }
)
_SCREEN_DENIED_OPCODES = bytes(dis.opmap[name] for name in ("STORE_ATTR", "DELETE_ATTR"))

# Modules whose namespaces are fingerprinted after each program (if loaded): the ones programs use.
_WATCHED_MODULES = (
    "builtins", "math", "cmath", "sympy", "numpy", "fractions", "decimal", "statistics", "itertools",
    "functools", "collections", "operator", "numbers", "random", "string", "re", "datetime",
)
# Modules imported into the zygote besides the preamble, so a worker never pays for them.
_PREWARM_MODULES = ("numpy", "fractions", "decimal", "statistics", "itertools", "functools",
                    "collections", "datetime", "cmath", "random")

# Audit events refused inside a worker (exact names and prefixes).  "open" and the path events are
# checked against the working directory instead.
_AUDIT_DENIED = frozenset(
    {
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.startfile",
        "os.kill", "os.killpg", "signal.pthread_kill", "os.chdir", "os.lockf",
        "resource.setrlimit", "resource.prlimit", "sys.addaudithook", "sys.settrace", "sys.setprofile",
        "sys._current_frames", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "subprocess.Popen", "pty.spawn", "webbrowser.open", "urllib.Request",
    }
)
_AUDIT_DENIED_PREFIXES = ("ctypes.", "socket.", "shutil.", "sqlite3.", "dbm.", "http.", "ftplib.",
                          "smtplib.", "poplib.", "imaplib.", "nntplib.", "telnetlib.", "syslog.")
# event -> (indices of path arguments, indices of dir_fd arguments)
_AUDIT_PATH_EVENTS = {
    "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
    "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)), "os.symlink": ((1,), (2,)),
    "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.truncate": ((0,), ()),
    "os.utime": ((0,), (3,)), "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()),
    "os.chflags": ((0,), ()), "os.lchflags": ((0,), ()),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_ALWAYS_WRITABLE = frozenset({"/dev/null"})


class SandboxViolation(PermissionError):
    """Raised by the audit hook; a PermissionError so library code that expects one copes."""


class OutputLimitExceeded(Exception):
    """Raised by the stdout/stderr sink once a program printed more than its budget."""


# ---------------------------------------------------------------------------------------------------
# Zygote


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _isolate_network(libc: ctypes.CDLL) -> str:
    _check(libc.unshare(_CLONE_NEWNET | _CLONE_NEWIPC), "unshare(NEWNET|NEWIPC)")
    return "on: private network namespace (downed loopback only) and IPC namespace"


def _isolate_filesystem(libc: ctypes.CDLL) -> str:
    """Read-only view of the host filesystem with private tmpfs mounts where anyone could write."""
    if os.uname().machine != "x86_64":
        raise OSError(errno.ENOSYS, "mount_setattr syscall number only known for x86_64")
    private = list(dict.fromkeys(
        os.path.realpath(os.fsdecode(path)) for path in _PRIVATE_TMPFS_DIRS if os.path.isdir(path)))
    needed = _sandbox_dirs()
    for directory in needed:
        if directory in private:  # checked before anything changes, so the layer is simply off
            raise OSError(errno.EBUSY, f"interpreter directory {directory} would get a private tmpfs")
    _check(libc.unshare(_CLONE_NEWNS), "unshare(NEWNS)")
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    attr = _MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, 0, 0)
    rc = libc.syscall(_SYS_MOUNT_SETATTR_X86_64, _AT_FDCWD, b"/", _AT_RECURSIVE, ctypes.byref(attr),
                      ctypes.sizeof(attr))
    _check(rc, "mount_setattr(/, RDONLY, recursive)")
    # Directories the interpreter needs (a venv or a checkout under /tmp ...) would vanish under the
    # private tmpfs.  Hold each one through an O_PATH fd (opened in our namespace, so it can be
    # bind-mounted), mount the tmpfs, then bind it back read-only at the same path.
    held: list[tuple[str, int]] = []
    try:
        for directory in needed:
            if any(directory.startswith(tmp + os.sep) for tmp in private):
                held.append((directory, os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)))
        for path in private:
            _check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                              _PRIVATE_TMPFS_OPTIONS), f"tmpfs on {path}")
        for directory, fd in held:
            os.makedirs(directory, mode=0o755, exist_ok=True)  # root-owned mount point in the tmpfs
            _check(libc.mount(f"/proc/self/fd/{fd}".encode(), directory.encode(), None,
                              _MS_BIND | _MS_REC, None), f"keep {directory}")
            rc = libc.syscall(_SYS_MOUNT_SETATTR_X86_64, _AT_FDCWD, directory.encode(), _AT_RECURSIVE,
                              ctypes.byref(attr), ctypes.sizeof(attr))
            _check(rc, f"mount_setattr({directory}, RDONLY, recursive)")
    finally:
        for _, fd in held:
            os.close(fd)
    kept = f", kept {', '.join(d for d, _ in held)} read-only" if held else ""
    return f"on: host filesystem read-only, private tmpfs on {', '.join(private)}{kept}"


def _python_dirs() -> list[str]:
    """Directories a worker must be able to read to import modules lazily (stdlib, site-packages)."""
    candidates = [*sys.path, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    found = {os.path.realpath(path) for path in candidates if path and os.path.isdir(path)}
    # Drop directories nested in another one: exposing the outer one exposes them too.
    ordered = sorted(found)
    return [d for d in ordered if not any(d != o and d.startswith(o + os.sep) for o in ordered)]


def _sandbox_dirs() -> list[str]:
    """The interpreter's directories plus this script's own (package) directory, outermost only."""
    found = set(_python_dirs())
    found.add(os.path.dirname(os.path.realpath(__file__)))
    ordered = sorted(found)
    return [d for d in ordered if not any(d != o and d.startswith(o + os.sep) for o in ordered)]


def _untraversable_ancestor(path: str) -> str | None:
    """The first directory on the way to ``path`` that an unrelated user may not enter, if any."""
    current = os.sep
    for part in path.strip(os.sep).split(os.sep):
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return current
        current = os.path.join(current, part)
    return None


def _expose_python_dirs(libc: ctypes.CDLL, scratch: str) -> str:
    """Make the interpreter's directories readable for ``nobody`` inside our mount namespace.

    A Python installed under a private home (``/root/.pyenv``) cannot be read by an unprivileged
    worker, so lazy imports (``import traceback``) would fail.  For every such blocked ancestor we
    mount an empty tmpfs over it (which also hides everything else in it, e.g. the rest of /root)
    and bind-mount only the interpreter's directories back, read-only.
    """
    blocked: dict[str, list[str]] = {}
    for directory in _python_dirs():
        ancestor = _untraversable_ancestor(directory)
        if ancestor is not None:
            blocked.setdefault(ancestor, []).append(directory)
    if not blocked:
        return "on: interpreter directories already readable"
    held: list[tuple[str, str]] = []
    for directory in (d for dirs in blocked.values() for d in dirs):
        hold = os.path.join(scratch, f"hold{len(held)}")
        os.mkdir(hold, 0o700)
        _check(libc.mount(directory.encode(), hold.encode(), None, _MS_BIND | _MS_REC, None),
               f"hold {directory}")
        held.append((directory, hold))
    for ancestor in blocked:
        _check(libc.mount(b"tmpfs", ancestor.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                          _EXPOSE_TMPFS_OPTIONS), f"tmpfs over {ancestor}")
    for directory, hold in held:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        _check(libc.mount(hold.encode(), directory.encode(), None, _MS_BIND | _MS_REC, None),
               f"expose {directory}")
        _check(libc.mount(None, directory.encode(), None,
                          _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID, None),
               f"read-only {directory}")
    return f"on: hid {', '.join(blocked)} except {', '.join(d for d, _ in held)}"


def _can_read_as(uid: int, gid: int, directories: list[str]) -> str | None:
    """Fork a probe that drops to uid/gid and lists ``directories``; return the first failure."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        failure = b""
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            for directory in directories:
                os.listdir(directory)
        except OSError as exc:
            failure = str(exc).encode()
        os.write(write_end, failure)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        failure = pipe.read().decode()
    os.waitpid(pid, 0)
    return failure or None


def _best_effort(layers: dict[str, str], name: str, fn, *args) -> bool:
    try:
        layers[name] = fn(*args)
        return True
    except Exception as exc:  # noqa: BLE001 - any failure just means the layer is unavailable
        layers[name] = f"off: {exc}"
        return False


def _nobody_ids() -> tuple[int, int]:
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return _NOBODY_FALLBACK_ID, _NOBODY_FALLBACK_ID


class _Zygote:
    """Forks workers on request of the caller and kills/reaps them; never runs a program itself."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.ctrl = socket.socket(fileno=config["ctrl_fd"])
        self.layers: dict[str, str] = {}
        self.workers: dict[int, str] = {}  # pid -> working directory
        self.counter = 0
        self.libc = _libc()

    def setup(self) -> None:
        # Terminal signals are the caller's business; the zygote ends when its channel closes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # The host filesystem is (or should be treated as) read-only here: a lazy import of a module
        # without cached bytecode must not try to write __pycache__, which a worker's audit hook
        # would report as a sandbox violation.
        sys.dont_write_bytecode = True
        if self.config["isolate"]:
            _best_effort(self.layers, "network", _isolate_network, self.libc)
            _best_effort(self.layers, "filesystem", _isolate_filesystem, self.libc)
        else:
            self.layers["network"] = self.layers["filesystem"] = "off: disabled by caller"
        # With the filesystem layer on, the host's TMPDIR is read-only: use the private /tmp.
        private_tmp = self.layers["filesystem"].startswith("on")
        self.base = tempfile.mkdtemp(prefix="reft_exec_", dir="/tmp" if private_tmp else None)
        self.uid, self.gid = os.getuid(), os.getgid()
        if os.geteuid() != 0 or not self.config["drop_privileges"]:
            why = "disabled by caller" if os.geteuid() == 0 else "zygote is not root"
            self.layers["privileges"] = f"off: {why} (workers keep uid {self.uid})"
        else:
            nobody = _nobody_ids()
            if private_tmp:
                # Mount holders live in the private /tmp (gone with the namespace), never in
                # self.base, which gets rmtree'd.
                scratch = tempfile.mkdtemp(prefix="reft_hold_", dir="/tmp")
                _best_effort(self.layers, "interpreter", _expose_python_dirs, self.libc, scratch)
            failure = _can_read_as(*nobody, _python_dirs())
            if failure is None:
                self.uid, self.gid = nobody
                self.layers["privileges"] = f"on: workers run as uid {self.uid} gid {self.gid}"
            else:  # an unprivileged worker could not import the standard library: stay correct
                self.layers["privileges"] = f"off: nobody cannot read the interpreter ({failure})"
        os.chmod(self.base, 0o711)  # workers may traverse into their own directory, not list others
        # Import what programs use, once, so every worker starts warm.
        exec(compile(self.config["preamble"], "<preamble>", "exec"), {})
        for name in _PREWARM_MODULES:
            try:
                __import__(name)
            except Exception:  # noqa: BLE001,S112 - optional accelerators only
                continue
        self.class_fingerprint = _ClassFingerprint()
        self.layers["seccomp"] = ("on: x86-64 syscall filter" if os.uname().machine == "x86_64"
                                  else "off: filter only written for x86_64")

    def serve(self) -> None:
        self._reply({"ok": True, "pid": os.getpid(), "layers": self.layers})
        try:
            while True:
                msg, fds, _flags, _addr = socket.recv_fds(self.ctrl, 65536, 1)
                if not msg:
                    break  # caller closed the channel or died
                request = json.loads(msg)
                op = request.get("op")
                try:
                    if op == "spawn" and len(fds) == 1:
                        self._reply({"pid": self._spawn(fds.pop())})
                    elif op == "kill":
                        self._reply({"status": self._kill(int(request["pid"]))})
                    else:
                        self._reply({"error": f"bad request {request!r}"})
                except OSError as exc:  # e.g. fork() failing under memory pressure: tell the caller
                    self._reply({"error": repr(exc)})
                finally:
                    for fd in fds:
                        os.close(fd)
        finally:
            for pid in list(self.workers):
                self._kill(pid)
            shutil.rmtree(self.base, ignore_errors=True)

    def _reply(self, payload: dict) -> None:
        self.ctrl.send(json.dumps(payload).encode())

    def _spawn(self, chan_fd: int) -> int:
        self.counter += 1
        workdir = os.path.join(self.base, f"w{self.counter}")
        os.mkdir(workdir, 0o700)
        os.chown(workdir, self.uid, self.gid)
        zygote_pid = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            os.close(chan_fd)
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        if pid == 0:  # worker
            status = _WORKER_EXIT_FAILURE
            try:
                _Worker(chan_fd, workdir, self, zygote_pid).run()
                status = 0
            finally:
                os._exit(status)
        os.close(chan_fd)
        self.workers[pid] = workdir
        return pid

    def _kill(self, pid: int) -> int | None:
        """SIGKILL a worker's process group and reap it; safe because only we can reap it."""
        workdir = self.workers.pop(pid, None)
        if workdir is None:
            return None  # not ours (already reaped): never signal a pid we do not own
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _, status = os.waitpid(pid, 0)
        shutil.rmtree(workdir, ignore_errors=True)
        return status


# ---------------------------------------------------------------------------------------------------
# Worker


class _CappedSink(io.TextIOBase):
    """Replacement for sys.stdout/stderr: discards text, counts bytes, fails past the budget."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget
        self.used = 0
        self.exceeded = False

    def reset(self) -> None:
        self.used = 0
        self.exceeded = False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.used += len(text.encode("utf-8", "surrogatepass"))
        if self.used > self.budget:
            self.exceeded = True
            raise OutputLimitExceeded(f"program printed more than {self.budget} bytes")
        return len(text)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "memory"
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a hostile __str__ must not break error reporting
        message = "<unprintable>"
    text = f"exception: {type(exc).__name__}: {message}" if message else f"exception: {type(exc).__name__}"
    return text[:_MAX_ERROR_CHARS]


def _screen(code: types.CodeType) -> str | None:
    """Return why a compiled program is not plain (see _SCREEN_DENIED_NAMES), or None if it is."""
    stack = [code]
    while stack:
        co = stack.pop()
        for name in co.co_names:
            if name in _SCREEN_DENIED_NAMES or name.startswith("_"):
                return f"uses {name!r}"
        ops = co.co_code[::2]
        for opcode in _SCREEN_DENIED_OPCODES:
            if opcode in ops:
                return f"uses {dis.opname[opcode]}"
        stack.extend(const for const in co.co_consts if isinstance(const, types.CodeType))
    return None


class _Fingerprint:
    """Identity snapshot of shared module namespaces, to catch monkeypatching between programs.

    The strict check compares values with ``is`` so a hostile object cannot claim equality.  The
    quick check builds one tuple of all values and compares it with ``==``, which CPython does
    identity-first in C (~3x faster); an object whose ``__eq__`` lies could slip through it, but
    defining one needs a class (dunder names), i.e. a program that fails the static screen, and
    those get the strict check.  New keys are tolerated (lazy submodule imports add them) and then
    become part of the snapshot.
    """

    _MISSING = object()

    def __init__(self) -> None:
        self.modules: dict[str, object] = {
            name: sys.modules[name] for name in _WATCHED_MODULES if name in sys.modules
        }
        self._snapshot()

    def _snapshot(self) -> None:
        self.namespaces = [(name, module.__dict__) for name, module in self.modules.items()]
        self.keys = [tuple(namespace) for _, namespace in self.namespaces]
        self.values = [tuple(namespace.values()) for _, namespace in self.namespaces]
        self.all_values = tuple(chain.from_iterable(self.values))

    def changed(self, strict: bool) -> str | None:
        """Name of the first replaced/removed module attribute (or module), None if intact."""
        for name, module in self.modules.items():
            if sys.modules.get(name) is not module:
                return f"sys.modules[{name!r}]"
        if not strict and tuple(chain.from_iterable(ns.values() for _, ns in self.namespaces)) == self.all_values:
            return None
        is_, missing = operator.is_, self._MISSING
        for (name, namespace), keys, values in zip(self.namespaces, self.keys, self.values):
            if len(namespace) == len(values) and all(map(is_, namespace.values(), values)):
                continue
            for key, value in zip(keys, values):
                if namespace.get(key, missing) is not value:
                    return f"{name}.{key}"
        self._snapshot()  # only additions: accept them
        return None


class _ClassFingerprint:
    """Identity snapshot of the behaviour (callables, descriptors) of classes the watched modules export.

    Costs a few milliseconds, so it only runs after programs that failed the static screen: plain
    programs cannot store attributes.  Plain data attributes (counters, caches) are not compared:
    libraries update them legitimately.
    """

    _MISSING = object()

    def __init__(self) -> None:
        classes: dict[int, type] = {}
        for name in _WATCHED_MODULES:
            module = sys.modules.get(name)
            for value in list(getattr(module, "__dict__", {}).values()):
                if isinstance(value, type):
                    classes.update((id(cls), cls) for cls in value.__mro__ if cls is not object)
        self.snapshots = [
            (cls, tuple((key, value) for key, value in cls.__dict__.items() if self._behavioural(value)))
            for cls in classes.values()
        ]

    @staticmethod
    def _behavioural(value: object) -> bool:
        return callable(value) or isinstance(value, (property, classmethod, staticmethod))

    def changed(self) -> str | None:
        missing = self._MISSING
        for cls, items in self.snapshots:
            namespace = cls.__dict__
            for key, value in items:
                if namespace.get(key, missing) is not value:
                    return f"{cls.__module__}.{cls.__qualname__}.{key}"
        return None


def _to_plain(value: object, max_chars: int) -> object:
    """Convert solution()'s return value into int/float/str/bool (see execute.py for the rules)."""
    kind = type(value)
    if value is None or kind is bool or kind is float:
        return value
    if kind is int or isinstance(value, numbers.Integral):
        value = int(value)
        if value.bit_length() > _MAX_ANSWER_INT_BITS:
            raise OutputLimitExceeded("integer answer too large")
        return value
    if isinstance(value, str):
        text = str.__str__(value)
    else:
        try:
            return float(value)  # sympy/numpy numbers, Fraction, Decimal, 0-d arrays ...
        except Exception:  # noqa: BLE001 - anything non-numeric falls back to its text form
            text = str(value)
            if not isinstance(text, str):
                raise TypeError("__str__ returned non-string") from None
            text = str.__str__(text)
    if len(text) > max_chars:
        raise OutputLimitExceeded("answer too large")
    return text


class _Worker:
    """One sandboxed process that executes programs sent by the caller, one at a time."""

    def __init__(self, chan_fd: int, workdir: str, zygote: _Zygote, zygote_pid: int) -> None:
        self.chan_fd = chan_fd
        self.workdir = workdir
        self.zygote_pid = zygote_pid
        self.config = zygote.config
        self.uid, self.gid = zygote.uid, zygote.gid
        self.libc = zygote.libc
        self.zygote_class_fingerprint = zygote.class_fingerprint  # built once, shared copy-on-write
        self.violations: list[str] = []

    # -- set-up ----------------------------------------------------------------------------------
    def run(self) -> None:
        # Until set-up is done, keep a copy of the zygote's stderr (the caller's) for diagnostics; a
        # worker that cannot start would otherwise die silently.  Closed before any program runs.
        self.diag_fd = os.dup(2)
        try:
            self._confine_process()
            self._limit_resources()
            self._drop_privileges()
            self._install_seccomp()
            self._prepare_interpreter()
        except BaseException as exc:
            message = f"reft_exp sandbox worker {os.getpid()}: set-up failed: {exc!r}\n"
            os.write(self.diag_fd, message.encode(errors="replace"))
            raise
        os.close(self.diag_fd)
        self._serve()

    def _confine_process(self) -> None:
        os.setsid()
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        # Keep only stdio, the channel and (during set-up) the diagnostics fd: the zygote's control
        # socket in particular must be unreachable.
        keep = sorted({self.chan_fd, self.diag_fd})
        lower = 3
        for fd in keep:
            os.closerange(lower, fd)
            lower = fd + 1
        os.closerange(lower, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        os.chdir(self.workdir)
        os.environ["TMPDIR"] = os.environ["HOME"] = self.workdir
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over-size writes fail with EFBIG instead
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    def _limit_resources(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as statm:
            baseline = int(statm.read().split()[0]) * page
        self.memory_limit = baseline + self.config["memory_mb"] * 1024 * 1024
        limits = {
            resource.RLIMIT_AS: self.memory_limit,
            resource.RLIMIT_DATA: self.memory_limit,
            resource.RLIMIT_CORE: 0,
            resource.RLIMIT_FSIZE: _RLIMIT_FSIZE_BYTES,
            resource.RLIMIT_NOFILE: _RLIMIT_NOFILE,
            resource.RLIMIT_MEMLOCK: 0,
            resource.RLIMIT_STACK: _RLIMIT_STACK_BYTES,  # C recursion ends in SIGSEGV, not in swap
        }
        for which, value in limits.items():
            hard = resource.getrlimit(which)[1]
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)  # never try to raise a limit (fails unless root)
            resource.setrlimit(which, (value, value))

    def _drop_privileges(self) -> None:
        if os.geteuid() == 0 and (self.uid, self.gid) != (0, 0):
            os.setgroups([])
            os.setresgid(self.gid, self.gid, self.gid)
            os.setresuid(self.uid, self.uid, self.uid)
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # enforced for every uid but root
        # Set after the uid change, which clears it; then close the race with an early zygote death.
        _check(self.libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")
        if os.getppid() != self.zygote_pid:
            os._exit(_WORKER_EXIT_FAILURE)
        _check(self.libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
        _check(self.libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "PR_SET_DUMPABLE")

    def _install_seccomp(self) -> None:
        if not self.config["isolate"] or os.uname().machine != "x86_64":
            return
        ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, JMP|JEQ|K, JMP|JGE|K, RET|K
        allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM  # SECCOMP_RET_ALLOW / RET_ERRNO(EPERM)
        denied = sorted(_SECCOMP_DENIED_X86_64.values())
        # layout: [ld arch, jeq arch, ret deny, ld nr, jge x32, jeq nr_1..nr_n, ret allow, ret deny]
        program: list[tuple[int, int, int, int]] = [
            (ld_abs, 0, 0, 4), (jeq, 1, 0, _AUDIT_ARCH_X86_64), (ret, 0, 0, deny), (ld_abs, 0, 0, 0)]
        deny_index = 4 + 1 + len(denied) + 1
        program.append((jge, deny_index - 5, 0, _X32_SYSCALL_BIT))
        for offset, number in enumerate(denied):
            index = 5 + offset
            program.append((jeq, deny_index - (index + 1), 0, number))
        program += [(ret, 0, 0, allow), (ret, 0, 0, deny)]

        class SockFilter(ctypes.Structure):
            _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                        ("k", ctypes.c_uint32)]

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]

        filters = (SockFilter * len(program))(*[SockFilter(*insn) for insn in program])
        fprog = SockFprog(len(program), filters)
        _check(self.libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0),
               "PR_SET_SECCOMP")

    def _prepare_interpreter(self) -> None:
        self.sink = _CappedSink(self.config["max_output_bytes"])
        sys.stdout = sys.stderr = sys.__stdout__ = sys.__stderr__ = self.sink
        sys.stdin = sys.__stdin__ = io.StringIO()
        self.builtins_snapshot = dict(builtins.__dict__)
        self.fingerprint = _Fingerprint()
        self.class_fingerprint = self.zygote_class_fingerprint
        self.recursion_limit = sys.getrecursionlimit()
        self.preamble = self.config["preamble"]
        self.preamble_code = compile(self.preamble, "<preamble>", "exec")
        self.call_code = compile("solution()", "<call>", "eval")
        self.max_programs = self.config["max_programs_per_worker"]
        self.programs_run = 0
        self.rss_recycle_kib = int(self.memory_limit * _RSS_RECYCLE_FRACTION) // 1024
        self.chan = socket.socket(fileno=self.chan_fd)
        if self.config["audit_hook"]:
            sys.addaudithook(self._make_audit_hook())  # last: from here on every event is policed

    def _make_audit_hook(self):
        workdir = os.path.realpath(self.workdir)
        prefix = workdir + os.sep
        violations = self.violations
        realpath, fsdecode = os.path.realpath, os.fsdecode
        denied, denied_prefixes, path_events = _AUDIT_DENIED, _AUDIT_DENIED_PREFIXES, _AUDIT_PATH_EVENTS
        write_flags, always_writable = _WRITE_FLAGS, _ALWAYS_WRITABLE

        def refuse(event: str, detail: object) -> None:
            reason = f"{event} {detail!r}"[:_MAX_ERROR_CHARS]
            violations.append(reason)
            raise SandboxViolation(f"blocked by sandbox: {reason}")

        def inside(path: object) -> bool:
            if isinstance(path, int):
                return False
            try:
                resolved = realpath(fsdecode(path))
            except Exception:  # noqa: BLE001 - unparsable path: refuse
                return False
            return resolved == workdir or resolved.startswith(prefix) or resolved in always_writable

        def hook(event: str, args: tuple) -> None:
            if event == "open":
                path, mode, flags = (tuple(args) + (None, None, 0))[:3]
                flags = flags if isinstance(flags, int) else 0
                if isinstance(path, int):
                    if path > 2:  # the channel and anything else inherited is off limits
                        refuse(event, path)
                    return
                writing = bool(flags & write_flags) or (
                    isinstance(mode, str) and any(c in mode for c in "wax+"))
                if writing and not inside(path):
                    refuse("open for writing", path)
                return
            if event in denied or event.startswith(denied_prefixes):
                refuse(event, args[:2])
            spec = path_events.get(event)
            if spec is not None:
                path_indices, dir_fd_indices = spec
                for index in dir_fd_indices:
                    if index < len(args) and args[index] not in (None, -1):  # -1: no dir_fd
                        refuse(event, "dir_fd")
                for index in path_indices:
                    if not inside(args[index]):
                        refuse(event, args[index])

        return hook

    # -- serving ---------------------------------------------------------------------------------
    def _recv_exact(self, size: int) -> bytes | None:
        chunks, remaining = [], size
        while remaining:
            chunk = self.chan.recv(remaining)
            if not chunk:
                return None
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _serve(self) -> None:
        while True:
            header = self._recv_exact(_HEADER.size)
            if header is None:
                return  # caller went away
            (size,) = _HEADER.unpack(header)
            if size > _MAX_REQUEST_BYTES:
                return
            body = self._recv_exact(size)
            if body is None:
                return
            request = json.loads(body)
            reply = self._execute(request["src"], request["id"])
            reply["id"] = request["id"]
            try:
                self._send(reply)
            except (ValueError, TypeError):  # e.g. an int JSON cannot encode
                reply.update(answer=None, error="output too large", recycle=True)
                self._send(reply)
            if reply["recycle"]:
                return  # exit; the caller reaps us through the zygote and starts a fresh worker

    def _send(self, message: dict) -> None:
        payload = json.dumps(message).encode()
        self.chan.sendall(_HEADER.pack(len(payload)) + payload)

    def _execute(self, source: str, request_id: int) -> dict:
        """Run one program; every outcome becomes {answer, error, recycle}."""
        violations, sink = self.violations, self.sink
        violations.clear()
        sink.reset()
        answer: object = None
        error: str | None = None
        recycle_reason: str | None = None
        program_globals: dict = {}
        program_locals: dict = {}
        value: object = None
        try:
            code = compile(self.preamble + source, "<program>", "exec")
            recycle_reason = _screen(code)
            if recycle_reason is not None:
                # Tell the caller before any of the program runs (afterwards nothing this process
                # says can be trusted): it will retire us and resend requests queued behind this one.
                self._send({"id": request_id, "notice": "retire"})
            # Upstream semantics: the preamble's modules are globals, the program (preamble lines
            # included) is exec'd with a separate locals dict, then eval("solution()") in the same
            # pair.  The builtins dict is a private copy so `__builtins__[...] = ...` stays local.
            program_globals["__builtins__"] = self.builtins_snapshot.copy()
            exec(self.preamble_code, program_globals)
            exec(code, program_globals, program_locals)
            if "solution" not in program_locals and "solution" not in program_globals:
                error = "no solution()"
            else:
                value = eval(self.call_code, program_globals, program_locals)
                answer = _to_plain(value, self.config["max_output_bytes"])
            # Drop the program's objects now, so their finalizers run (and get policed) as part of
            # this program rather than during the next one.
            value = None
            program_globals.clear()
            program_locals.clear()
        except OutputLimitExceeded:
            error = "output too large"
        except BaseException as exc:  # noqa: BLE001 - SystemExit, MemoryError, anything
            error = _describe_exception(exc)
            if error == "memory":
                recycle_reason = "ran out of memory"
            del exc
        finally:
            value = None
            program_globals.clear()
            program_locals.clear()
        if violations:
            answer, error, recycle_reason = None, f"blocked: {violations[0]}", "sandbox violation"
        elif sink.exceeded:
            answer, error = None, "output too large"
        tampered = self.fingerprint.changed(strict=recycle_reason is not None)
        if tampered is None and recycle_reason is not None:
            tampered = self.class_fingerprint.changed()
        if tampered is not None:
            answer, error = None, f"blocked: modified shared module state ({tampered})"
            recycle_reason = "tampered"
        if sys.stdout is not sink or sys.stderr is not sink or sys.getrecursionlimit() != self.recursion_limit:
            recycle_reason = "changed interpreter settings"
        self.programs_run += 1
        if recycle_reason is None and self.programs_run >= self.max_programs:
            recycle_reason = "program quota"
        if recycle_reason is None and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > self.rss_recycle_kib:
            recycle_reason = "memory high-water mark"
        return {"answer": answer, "error": error, "recycle": recycle_reason is not None}


def main() -> None:
    config = json.loads(sys.argv[1])
    zygote = _Zygote(config)
    zygote.setup()
    zygote.serve()


if __name__ == "__main__":
    main()
