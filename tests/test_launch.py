"""tests/launch.py: a launch forked from the worker's zygote behaves as ``python ARGV`` in a fresh interpreter
(argv, cwd, environment, stdin, stdout/stderr, exit status, its own session), and a launch whose import-time
environment differs runs as a fresh interpreter."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import launch
import pytest

PROBE = ("import json, os, sys; print(json.dumps({'argv': sys.argv, 'cwd': os.getcwd(), 'x': os.environ.get('X'), "
         "'stdin': sys.stdin.read(), 'main': __name__, 'pgid': os.getpgid(0), 'pid': os.getpid()})); "
         "print('to stderr', file=sys.stderr); sys.exit(int(os.environ.get('CODE', '0')))")


def _env(**extra: str) -> dict[str, str]:
    return dict(launch.BASE_ENV, **extra)


@pytest.mark.parametrize("fork", [True, False], ids=["zygote", "fresh"])
def test_a_launch_sees_its_argv_cwd_env_and_exits_with_its_code(tmp_path, fork):
    import json

    env = _env(X="42", CODE="3") if fork else _env(X="42", CODE="3", HOME=str(tmp_path))  # HOME: a fresh one
    assert bool(launch.import_env_difference(env)) is not fork
    done = launch.run(["-c", PROBE, "a", "b c"], cwd=tmp_path, env=env)
    assert done.returncode == 3 and done.stderr == "to stderr\n"
    seen = json.loads(done.stdout)
    assert seen["argv"] == ["-c", "a", "b c"] and seen["cwd"] == str(tmp_path) and seen["x"] == "42"
    assert seen["stdin"] == "" and seen["main"] == "__main__"
    assert seen["pgid"] == seen["pid"] != os.getpid()  # its own session and process group


def test_an_exception_exits_1_with_the_launch_s_traceback_only(tmp_path):
    done = launch.run(["-c", "def f():\n    raise ValueError('boom')\nf()"], cwd=tmp_path, env=_env())
    assert done.returncode == 1
    assert done.stderr.startswith("Traceback (most recent call last):\n")
    assert done.stderr.rstrip().endswith("ValueError: boom") and "launch.py" not in done.stderr


def test_a_module_runs_as_main_with_its_file_as_argv0(tmp_path):
    done = launch.run(["-m", "json.tool", "--sort-keys"], cwd=tmp_path, env=_env())  # stdin: empty
    assert done.returncode != 0 and "Expecting value" in done.stderr  # json.tool ran as __main__ on empty input
    script = tmp_path / "s.py"
    script.write_text("import sys, helper; print(sys.argv[0], helper.VALUE)")
    (tmp_path / "helper.py").write_text("VALUE = 7")  # the script's folder is on its sys.path
    done = launch.run([str(script)], cwd="/", env=_env())
    assert done.returncode == 0 and done.stdout.split() == [str(script), "7"]


def test_killing_the_process_group_kills_the_launch_and_its_children(tmp_path):
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print('up', flush=True); time.sleep(60)")
    proc = launch.popen(["-c", code], cwd=tmp_path, env=_env(), stdout=tmp_path / "out")
    deadline = time.time() + 30
    while "up" not in (tmp_path / "out").read_text():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2  # the launch and its child, in the launch's own process group
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    time.sleep(0.2)
    states = subprocess.run(["ps", "-o", "stat=", "-g", str(proc.pid)], capture_output=True, text=True).stdout
    assert all(s.startswith("Z") for s in states.split()), states  # nothing left running (zombies await init)
    with pytest.raises(subprocess.TimeoutExpired):
        launch.run(["-c", "import time; time.sleep(30)"], cwd=tmp_path, env=_env(), timeout=0.5)


def test_exit_waits_for_threads_and_shuts_executors_down_as_an_interpreter_does(tmp_path):
    code = ("import threading, time; from concurrent.futures import ThreadPoolExecutor\n"
            "pool = ThreadPoolExecutor(2); pool.submit(time.sleep, 0.2)  # never shut down by the program\n"
            "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done', flush=True))).start()\n"
            "import atexit; atexit.register(print, 'atexit ran')")
    done = launch.run(["-c", code], cwd=tmp_path, env=_env(), timeout=30)
    assert done.returncode == 0 and done.stdout.splitlines() == ["thread done", "atexit ran"]
