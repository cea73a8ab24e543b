"""Start the app (or a script) as its own process, without paying its imports each time.

About 40 tests run ``python -m reft_exp.run ...`` (or a benchmark script) as a process: the Hydra CLI, one-line
errors, kill-and-resume, launchers. Each such process spends ~4 CPU seconds importing torch, transformers,
accelerate and Hydra before it does anything: a fifth of the suite on 2 cores. So each test worker keeps one
*zygote*, a process that has imported those libraries once (and nothing of reft_exp), and every launch is a
``fork`` of it that then runs like ``python -m MODULE ARGS`` / ``python SCRIPT ARGS`` / ``python -c CODE``: its
own pid and session (``os.killpg(proc.pid, SIGKILL)`` kills it and whatever it started), its own cwd,
environment, argv, stdin from /dev/null, stdout/stderr to files, the module run as ``__main__`` by runpy (what
``-m`` does), atexit handlers and exit status as a fresh interpreter's. What it shares is only the imported
library modules, so a launch whose environment differs from the zygote's in a variable that those libraries
read at import time (``HF_*``, ``TRANSFORMERS_*``, ``OMP_*``, ``HOME``, ...) is started as a plain subprocess,
as is every launch when ``REFT_TEST_FORK=0`` (a debugging switch: each launch a fresh interpreter).

:func:`popen` returns an object with the parts of ``subprocess.Popen`` the tests use (``pid``, ``poll``,
``wait``, ``returncode``); :func:`run` returns a ``subprocess.CompletedProcess`` with text output.
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the zygote imports: the app's heavy third-party dependencies (never reft_exp: it is the code under test,
# and runpy warns when the module it runs as __main__ was already imported).
PRELOAD = ("torch", "transformers", "transformers.models.llama.modeling_llama", "transformers.generation.utils",
           "transformers.tokenization_utils_fast", "accelerate", "hydra", "hydra.main", "omegaconf", "pandas",
           "tokenizers", "matplotlib.figure", "matplotlib.ticker", "matplotlib.backends.backend_agg")
# Environment variables that those libraries read at import time: a launch whose value differs from the
# zygote's runs as a plain subprocess.
IMPORT_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "OMP_", "MKL_", "CUDA",
                       "PYTHON", "TOKENIZERS_", "ACCELERATE_", "XDG_", "HOME", "LD_")
POLL_S = 0.02
log = logging.getLogger(__name__)


def _import_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_ENV_PREFIXES)}


class _Zygote:
    """The per-worker zygote (started at first use, gone when this process exits: its stdin closes)."""

    def __init__(self, env: dict[str, str]):
        self.env = dict(env)
        self.proc = subprocess.Popen([sys.executable, __file__, "--zygote"], env=self.env, cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"test zygote did not start: {line!r}")
        self.lock = threading.Lock()
        atexit.register(self.close)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def submit(self, request: dict) -> None:
        with self.lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()

    def close(self) -> None:
        if self.alive():
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


# The environment of this test process (as the conftest set it up) plus the repository on PYTHONPATH: the
# zygote's; a launch can be forked from it when its import-time variables are these.
BASE_ENV = dict(os.environ, PYTHONPATH=str(ROOT))
_ZYGOTE: list[_Zygote] = []


def import_env_difference(env: dict[str, str]) -> list[str]:
    """The import-time variables in which ``env`` differs from the zygote's. A variable that a library set in
    this test process after the zygote started (torch sets TORCHINDUCTOR_CACHE_DIR to its default) and that
    ``env`` merely inherits from ``os.environ`` is not a difference the test asked for: it is left out."""
    keys = set(_import_env(env)) | set(_import_env(BASE_ENV))
    inherited = {k for k in keys if k not in BASE_ENV and env.get(k) == os.environ.get(k)}
    return sorted(k for k in keys - inherited if env.get(k) != BASE_ENV.get(k))


def _zygote_for(env: dict[str, str]) -> _Zygote | None:
    if os.environ.get("REFT_TEST_FORK", "1") == "0":
        return None
    difference = import_env_difference(env)
    if difference:
        log.info("launch as a fresh interpreter: %s differ from the zygote's", difference)
        return None
    if not _ZYGOTE or not _ZYGOTE[0].alive():
        _ZYGOTE[:] = [_Zygote(BASE_ENV)]
    return _ZYGOTE[0]


class ForkedProcess:
    """A launch forked from the zygote: ``pid`` (its own session), ``poll()``, ``wait(timeout)``, ``returncode``."""

    def __init__(self, folder: Path):
        self._folder = folder
        self._status = folder / "status"
        self.returncode: int | None = None
        pid_file = folder / "pid"
        deadline = time.time() + 60
        while not pid_file.exists():
            if time.time() > deadline:
                raise RuntimeError("the test zygote never started the launch")
            time.sleep(POLL_S / 4)
        self.pid = int(pid_file.read_text())

    def poll(self) -> int | None:
        if self.returncode is None and self._status.exists():
            self.returncode = int(self._status.read_text())
            shutil.rmtree(self._folder, ignore_errors=True)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(POLL_S)
        return self.returncode


def popen(argv: list[str], *, cwd: Path | str, env: dict[str, str], stdout: Path | str,
          stderr: Path | str | None = None):
    """Start ``python ARGV`` (``ARGV`` as after the interpreter: ``["-m", "reft_exp.run", ...]``, ``[script, ...]``
    or ``["-c", code, ...]``) in its own session, stdout to the file ``stdout``, stderr to ``stderr`` (None: into
    stdout). Forked from the zygote when it can be, else a ``subprocess.Popen``."""
    zygote = _zygote_for(env)
    if zygote is None:
        with open(stdout, "w") as out:
            err = subprocess.STDOUT if stderr is None else open(stderr, "w")
            try:
                return subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=out, stderr=err,
                                        stdin=subprocess.DEVNULL, start_new_session=True, text=True)
            finally:
                if stderr is not None:
                    err.close()
    for path in (stdout, stderr):  # there when this returns, as with subprocess.Popen
        if path is not None:
            Path(path).write_text("")
    folder = Path(tempfile.mkdtemp(prefix="launch-"))
    zygote.submit({"argv": list(map(str, argv)), "cwd": str(cwd), "env": dict(env), "stdout": str(stdout),
                   "stderr": None if stderr is None else str(stderr), "pid": str(folder / "pid"),
                   "status": str(folder / "status")})
    return ForkedProcess(folder)


def run(argv: list[str], *, cwd: Path | str, env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """``subprocess.run([sys.executable, *argv], capture_output=True, text=True)``, through :func:`popen`."""
    env = dict(os.environ, PYTHONPATH=str(ROOT)) if env is None else env
    folder = Path(tempfile.mkdtemp(prefix="launch-out-"))
    out, err = folder / "stdout", folder / "stderr"
    proc = popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    result = subprocess.CompletedProcess([sys.executable, *argv], rc, out.read_text(), err.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    return result


def app_env(**extra: str) -> dict[str, str]:
    """The environment the tests run the app in: offline (no hub, no W&B), the repository on PYTHONPATH."""
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                WANDB_MODE="disabled", PYTHONPATH=str(ROOT), **extra)


def run_app(args: list[str], cwd: Path | str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """``python -m reft_exp.run ARGS`` in :func:`app_env` (plus ``env``), through :func:`run`."""
    return run(["-m", "reft_exp.run", *args], cwd=cwd, env=app_env(**env), timeout=timeout)


# ------------------------------------------------------------------------------------------------ the zygote
def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _exit_code(exc: BaseException | None) -> int:
    """The exit status an interpreter gives for ``exc`` ending the main module (printing what it prints)."""
    if exc is None:
        return 0
    if isinstance(exc, SystemExit):
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:  # this file's frames: not the launch's
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)
    return 1


def _run_launch(req: dict) -> None:
    """In the forked child: run the launch, then exit as an interpreter does (``threading``'s exit hooks, e.g.
    concurrent.futures shutting its executors down, then non-daemon threads joined, atexit handlers, stdio
    flushed) but without tearing down the library modules, which are the zygote's (a second)."""
    try:
        _become_launch(req)
        code = _exit_code(None)
    except BaseException as exc:  # noqa: BLE001 (what an interpreter does with what ends its main module)
        code = _exit_code(exc)
    threading._shutdown()  # what the interpreter does first: threading's exit hooks, then join non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _become_launch(req: dict) -> None:
    """Take the launch's session, cwd, environment, stdio and argv, then run it as ``python`` would."""
    os.setsid()
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    sys.stdin = open(os.devnull)  # noqa: SIM115 (the zygote's stdin buffer may hold later requests)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    os.dup2(os.open(req["stdout"], flags, 0o644), 1)
    os.dup2(os.open(req["stderr"], flags, 0o644) if req["stderr"] else 1, 2)
    argv = req["argv"]
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        sys.path[0] = ""
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        sys.argv = list(argv)
        sys.path[0] = str(Path(argv[0]).resolve().parent)
        runpy.run_path(argv[0], run_name="__main__")


def _serve() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    sys.path[0] = ""  # this folder is not on a launch's path
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the monitors below are reaped by the kernel
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if os.fork() != 0:
            continue
        # the monitor: starts the launch, writes its pid, waits for it, writes its exit status
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        pid = os.fork()
        if pid == 0:
            _run_launch(req)
        _write_atomic(req["pid"], str(pid))
        _, status = os.waitpid(pid, 0)
        _write_atomic(req["status"], str(os.waitstatus_to_exitcode(status)))
        os._exit(0)


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    _serve()
