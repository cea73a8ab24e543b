"""Reliability (docs/reliability.md): resumable SFT after SIGKILL, corrupt training states fall back to the
previous one, one-line errors from the app, concurrent jobs sharing a stage, a killed sweep re-launched."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import launch
import pytest
import torch

from reft_exp.results import RECORD_VERSION, RecordError, read_record
from reft_exp.runner import MANIFEST_FILE, STATE_DIR, GeneratorState, TrainState

pytestmark = pytest.mark.seconds(41)  # its measured time in `make test`: orders the collection (conftest)

ROOT = Path(__file__).resolve().parents[1]
ENV = launch.app_env()
# A few seconds per run: tiny data, short generations, one thread per job (two jobs share two cores),
# deterministic algorithms so that a resumed run can be compared with an uninterrupted one.
TINY = ["dataset.train_size=64", "dataset.test_size=16", "inference.max_new_tokens=24", "progress=false",
        "num_threads=1", "deterministic=true"]


def _popen(args: list[str], cwd: Path, log_name: str):
    """``python -m reft_exp.run ARGS`` in its own process group (forked from the worker's zygote,
    tests/launch.py); output to ``cwd/<log_name>``."""
    return launch.popen(["-m", "reft_exp.run", *args], cwd=cwd, env=ENV, stdout=cwd / log_name)


def _run(args: list[str], cwd: Path, log_name: str, timeout: int = 300) -> tuple[int, str]:
    proc = _popen(args, cwd, log_name)
    rc = proc.wait(timeout=timeout)
    return rc, (cwd / log_name).read_text()


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    """SIGKILL ``proc``'s whole process group as soon as ``ready()`` holds; fail if it never does."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
            return
        time.sleep(0.02)
    raise AssertionError(f"the kill condition never held (run exited with {proc.poll()})")


def _state_epoch(results: Path, kind: str = "sft") -> int:
    for path in (results / "cache" / kind).glob("*/last_state/progress.json"):
        try:
            return json.loads(path.read_text())["epoch"]
        except (OSError, ValueError):  # rotated away between glob and read
            pass
    return 0


def _metrics(rows: list[dict]) -> list[dict]:
    """Per-epoch rows without wall-clock measurements (throughput, timings), which differ run to run."""
    return [{k: v for k, v in r.items() if not re.search(r"per_s|time|seconds", k)} for r in rows]


def _records(results: Path) -> dict[str, dict]:
    return {p.stem: read_record(p) for p in sorted((results / "runs").glob("*.json"))}


# ------------------------------------------------------------------------------ training state (in-process)
def _tiny_training(accelerator, folder: Path):
    """A small model, optimizer, scheduler and data generator, prepared, with a TrainState over them."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    generator = torch.Generator().manual_seed(1)
    state = TrainState(accelerator, folder, [GeneratorState(generator)])
    return (model, optimizer, scheduler, generator), state


def _release(accelerator, state: TrainState) -> None:
    state.close()
    accelerator.free_memory()


class _Shared(torch.nn.Module):
    """An embedding whose weight is also the output layer (tied, as the tiny model and SmolLM2) and, with
    ``other``, also another layer's: only a tied output layer is expected in a saved state."""

    def __init__(self, other: bool):
        super().__init__()
        self.embed = torch.nn.Embedding(8, 4)
        self.lm_head = torch.nn.Linear(4, 8, bias=False)
        self.lm_head.weight = self.embed.weight
        if other:
            self.proj = torch.nn.Linear(4, 8, bias=False)
            self.proj.weight = self.embed.weight


@pytest.mark.parametrize("other", [False, True])
def test_state_save_is_silent_about_a_tied_output_layer_only(tmp_path, caplog, other):
    """accelerate warns "Removed shared tensor ..." at every save of a tied model; the runner drops that notice
    for a tied output layer (loading ties it again) and keeps it for any other shared tensor."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(_Shared(other))
    state = TrainState(accelerator, tmp_path / "state")
    with caplog.at_level(logging.WARNING):
        state.save()
    _release(accelerator, state)
    notices = [set(re.findall(r"'([^']+)'", r.getMessage())) for r in caplog.records
               if "Removed shared tensor" in r.getMessage()]
    assert notices == ([{"lm_head.weight", "proj.weight"}] if other else [])
    del model


def _epoch(model, optimizer, scheduler, generator) -> float:
    """One 'epoch': data drawn from ``generator``, dropout from the global RNG: both must be restored."""
    x = torch.randn(32, 8, generator=generator)
    loss = model(x).pow(2).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return loss.item()


def _snapshot(model, optimizer, scheduler, generator) -> dict:
    return {"model": {k: v.clone() for k, v in model.state_dict().items()},
            "exp_avg": [s["exp_avg"].clone() for s in optimizer.state_dict()["state"].values()],
            "lr": scheduler.get_last_lr()[0], "generator": generator.get_state().clone(),
            "rng": torch.get_rng_state().clone()}


def _same(a: dict, b: dict) -> bool:
    return (all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
            and all(torch.equal(x, y) for x, y in zip(a["exp_avg"], b["exp_avg"]))
            and a["lr"] == b["lr"] and torch.equal(a["generator"], b["generator"])
            and torch.equal(a["rng"], b["rng"]))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def two_states(tmp_path):
    """States after epoch 1 and epoch 2 on disk (accelerate checkpoints ``checkpoint_1`` and ``checkpoint_2``
    after the first was rotated out by ``total_limit`` 2), the snapshots of both, and what a resumed epoch 2
    and 3 must compute."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    folder = tmp_path / STATE_DIR
    parts, state = _tiny_training(acc, folder)
    snaps, losses = {}, {}
    state.save()  # epoch 0: rotated out by the two saves after it (total_limit 2)
    for epoch in (1, 2, 3):
        losses[epoch] = _epoch(*parts)
        if epoch < 3:
            state.progress.epoch = epoch
            state.save()
            snaps[epoch] = _snapshot(*parts)
    _release(acc, state)
    assert [p.name for p in state.checkpoints] == ["checkpoint_1", "checkpoint_2"]
    return acc, folder, snaps, losses


def _resume(acc, folder):
    parts, state = _tiny_training(acc, folder)
    _epoch(*parts)  # move away from the initial state, so a failed load would be visible
    loaded = state.load()
    return (state.progress.epoch if loaded else None), parts, state


def test_train_state_resumes_exactly(two_states):
    acc, folder, snaps, losses = two_states
    epoch, parts, state = _resume(acc, folder)
    assert epoch == 2 and _same(_snapshot(*parts), snaps[2])
    assert _epoch(*parts) == losses[3]  # model, optimizer, scheduler, data generator, dropout RNG: restored
    assert json.loads((folder / "progress.json").read_text())["checkpoint"] == "checkpoint_2"
    _release(acc, state)


def _newest(folder: Path) -> Path:
    return folder / "checkpoints" / "checkpoint_2"


@pytest.mark.parametrize("damage", [
    pytest.param(lambda f: _truncate(f / "model.safetensors"), id="truncated"),
    pytest.param(lambda f: _flip_byte(f / "optimizer.bin"), id="bit-flip"),
    pytest.param(lambda f: (f / "random_states_0.pkl").unlink(), id="missing-file"),
    pytest.param(lambda f: (f / MANIFEST_FILE).write_text("{"), id="bad-manifest"),
    pytest.param(lambda f: (f / MANIFEST_FILE).unlink(), id="cut-short"),  # killed while saving
])
def test_corrupt_latest_state_falls_back_to_previous(two_states, damage, caplog):
    acc, folder, snaps, losses = two_states
    damage(_newest(folder))
    with caplog.at_level(logging.WARNING, logger="reft_exp.runner"):
        epoch, parts, state = _resume(acc, folder)
    assert epoch == 1 and _same(_snapshot(*parts), snaps[1])
    assert _epoch(*parts) == losses[2]  # the redone epoch is the one the uninterrupted run computed
    assert "training state unusable" in caplog.text and str(_newest(folder)) in caplog.text
    assert "resuming from the previous training state" in caplog.text
    state.progress.epoch = 2
    state.save()  # the damaged state is replaced; the good one stays as the fallback
    assert [p.name for p in state.checkpoints] == ["checkpoint_1", "checkpoint_2"]
    _release(acc, state)


def test_both_states_corrupt_restart_from_scratch(two_states, caplog):
    acc, folder, _, _ = two_states
    _truncate(_newest(folder) / "model.safetensors")
    _flip_byte(folder / "checkpoints" / "checkpoint_1" / "custom_checkpoint_0.pkl")
    with caplog.at_level(logging.WARNING, logger="reft_exp.runner"):
        epoch, parts, state = _resume(acc, folder)
    assert epoch is None and "training restarts from the beginning" in caplog.text
    assert state.progress.epoch == 0 and state.progress.epochs == []
    _release(acc, state)


def test_stage_with_a_damaged_checkpoint_is_computed_again(tmp_path, caplog):
    """A complete stage whose checkpoint fails its checksum (or whose marker is unreadable) is not reused."""
    from accelerate import Accelerator

    from reft_exp.checkpoint import CorruptStateError, save_model, verify_model
    from reft_exp.config import TinyModelConfig
    from reft_exp.models import build_tiny_model, load_causal_lm, load_tokenizer
    from reft_exp.stages import DONE_MARKER, Stage, run_stage

    cfg = TinyModelConfig(name="tiny", kind="tiny", num_hidden_layers=1, hidden_size=32, intermediate_size=64)
    base = tmp_path / "base"
    build_tiny_model(base, [f"{i} + {i} = {2 * i}. Therefore, the answer is: {2 * i}" for i in range(50)], cfg)
    acc, calls = Accelerator(cpu=True), []

    def compute(folder: Path) -> dict:
        calls.append(folder)
        save_model(acc, load_causal_lm(base, cfg), load_tokenizer(base, cfg), folder / "best")
        return {"computed": len(calls)}

    def verify(folder: Path) -> None:
        verify_model(folder / "best")

    stage = Stage(tmp_path / "cache", "demo", "demo", {"k": 1})
    assert run_stage(stage, acc, compute, verify) is False
    assert run_stage(stage, acc, compute, verify) is True and len(calls) == 1
    _flip_byte(stage.dir / "best" / "model.safetensors")
    with pytest.raises(CorruptStateError, match=r"model\.safetensors: checksum mismatch"):
        verify_model(stage.dir / "best")
    with caplog.at_level(logging.WARNING, logger="reft_exp.stages"):
        assert run_stage(stage, acc, compute, verify) is False
    assert len(calls) == 2 and "complete but unusable" in caplog.text and "model.safetensors" in caplog.text
    verify_model(stage.dir / "best")
    assert stage.meta() == {"computed": 2}
    (stage.dir / DONE_MARKER).write_text('{"computed": ')  # damaged by hand: not done
    assert run_stage(stage, acc, compute, verify) is False and stage.meta() == {"computed": 3}


# ---------------------------------------------------------------------------------------- SFT kill -9
@pytest.mark.slow
def test_sft_killed_mid_run_resumes_to_the_same_metrics(tmp_path):
    args = [*TINY, "sft.epochs=4"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    reference = _popen([f"paths.results_dir={straight}", *args], tmp_path, "straight.log")  # in parallel
    proc = _popen([f"paths.results_dir={resumed}", *args], tmp_path, "killed.log")
    _kill_when(proc, lambda: _state_epoch(resumed) >= 2)
    killed_at = _state_epoch(resumed)
    assert not (resumed / "runs").exists()
    rc, log = _run([f"paths.results_dir={resumed}", *args], tmp_path, "resumed.log")
    assert rc == 0, log[-3000:]
    assert f"sft: resuming after epoch {killed_at}" in log
    assert "unusable" not in log  # a kill leaves a complete latest state: no fallback needed
    assert reference.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()[-3000:]
    (a,), (b,) = _records(straight).values(), _records(resumed).values()
    assert len(a["epochs"]) == 4 and a["epochs"][0]["train_loss"] > a["epochs"][-1]["train_loss"]
    assert _metrics(a["epochs"]) == _metrics(b["epochs"])  # loss, lr, step, accuracy per epoch: bit for bit
    assert (a["accuracy"], a["best_epoch"]) == (b["accuracy"], b["best_epoch"])
    sft_dir = Path(b["stages"]["sft"]["dir"])  # the finished stage drops its resumable state
    assert (sft_dir / "best").is_dir() and not list(sft_dir.glob("*last_state*"))


# ---------------------------------------------------------------------------------------- bad input
def test_bad_input_gives_one_line_errors(tmp_path):
    """Each case through the app: exit code 2, one ``reft_exp: ...`` line on stderr naming the culprit."""
    old = tmp_path / "old_results"
    (old / "runs").mkdir(parents=True)
    (old / "runs" / "tiny__arith__n__sft__greedy__seed42.json").write_text(json.dumps(
        {"record_version": RECORD_VERSION + 1, "cell_id": "tiny__arith__n__sft__greedy__seed42"}))
    cases = {
        "unknown-option": (["method=nonexistent"], r"config error: method=nonexistent: no such option "
                           r"\(conf/method/nonexistent\.yaml not found\)\. Available options: .*reft, .*sft$"),
        "unknown-in-sweep": (["--multirun", "cot=n,q"],
                             r"config error: cot=q: no such option .*Available options: n, p"),
        "unknown-key": (["sft.lrr=1"], r"config error: Could not override 'sft\.lrr'.*\+sft\.lrr=1"),
        "bad-override": (["sft.lr=["], r"config error: no viable alternative at input '\['"),
        "model-path": (["model=codellama-7b", "model.path=/does/not/exist"],
                       r"config error: model\.path: model path '/does/not/exist' does not exist"),
        # every DataError takes this path; malformed JSON and a record without answer_value are covered at
        # the loader (test_data_upstream.py::test_malformed_json_names_file_and_record and
        # ::test_record_without_answer_value_names_file_and_record)
        "missing-data": (["dataset=svamp", "dataset.base_url=null", f"dataset.data_dir={tmp_path}/nowhere"],
                         r"data error: svamp_nl\.json not found in .*nowhere.*set dataset\.data_dir"),
        "old-results": ([f"paths.results_dir={old}"],
                        rf"results error: .*seed42\.json: results record version {RECORD_VERSION + 1}, "
                        rf"this reft_exp reads version {RECORD_VERSION}"),
    }
    procs = {}
    for name, (args, _) in cases.items():  # all at once: most of each run is importing torch
        if not any(a.startswith("paths.results_dir") for a in args):
            args = [*args, f"paths.results_dir={tmp_path}/results_{name}"]
        procs[name] = launch.popen(["-m", "reft_exp.run", *args, "progress=false"], cwd=tmp_path, env=ENV,
                                   stdout=tmp_path / f"{name}.out", stderr=tmp_path / f"{name}.err")
    for name, proc in procs.items():
        proc.wait(timeout=300)
        stderr = (tmp_path / f"{name}.err").read_text()
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, (name, stderr[-2000:])
        assert "Traceback" not in stderr, (name, stderr[-2000:])
        errors = [ln for ln in lines if ln.startswith("reft_exp: ")]
        assert len(errors) == 1 and errors[0] == lines[-1], (name, stderr[-2000:])
        assert re.search(cases[name][1], errors[0]), (name, errors[0])
        assert not (tmp_path / f"results_{name}" / "runs").exists()


def test_record_errors_name_the_file(tmp_path):
    path = tmp_path / "rec.json"
    for text, needle in [('{"record_version": 1', "not a valid results record"),
                         ("[1, 2]", "a JSON list, expected an object"),
                         ('{"record_version": 0}', "results record version 0")]:
        path.write_text(text)
        with pytest.raises(RecordError, match=re.escape(str(path)) + ".*" + re.escape(needle)):
            read_record(path)


def test_unknown_group_option_check_leaves_the_rest_to_hydra():
    from reft_exp.config import ConfigError
    from reft_exp.run import check_group_choices

    check_group_choices(["method=sft", "cot=n,p", "+experiment=smoke", "sft.lr=1", "seed=1,2",
                         "experiment=null", "hydra/launcher=basic", "method=choice(sft,x)", "--cfg", "job"])
    models = ", ".join(sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")))
    with pytest.raises(ConfigError, match=r"model=tiny2: .*Available options: " + re.escape(models) + "$"):
        check_group_choices(["-m", "model=tiny,tiny2"])
    check_group_choices(["-cd", "/elsewhere", "model=tiny2"])  # another config tree: Hydra decides


# -------------------------------------------------------------------------------------- concurrency
@pytest.mark.slow
def test_concurrent_jobs_compute_a_shared_stage_once(tmp_path):
    results = tmp_path / "results"
    args = [f"paths.results_dir={results}", *TINY, "sft.epochs=2"]
    jobs = [_popen([*args, f"tag={t}"], tmp_path, f"{t}.log") for t in ("a", "b")]
    assert [j.wait(timeout=300) for j in jobs] == [0, 0], (tmp_path / "a.log").read_text()[-3000:]
    logs = [(tmp_path / f"{t}.log").read_text() for t in ("a", "b")]
    both = "".join(logs)
    for kind in ("tiny_model", "sft"):
        assert both.count(f"stage {kind} computed") == 1 and both.count(f"stage {kind} reused") == 1, kind
        assert both.count(f"stage {kind} complete") == 1, kind  # STAGE_DONE.json written by one job only
    assert "stage sft is being computed by another job" in both  # the jobs really overlapped
    assert "unusable" not in both and "Traceback" not in both
    recs = _records(results)
    assert sorted(recs) == [f"tiny__arith__n__sft__greedy__seed42__{t}" for t in ("a", "b")]
    a, b = recs.values()
    assert {a["stages"]["sft"]["reused"], b["stages"]["sft"]["reused"]} == {True, False}
    assert a["stages"]["sft"]["dir"] == b["stages"]["sft"]["dir"]
    assert _metrics(a["epochs"]) == _metrics(b["epochs"])
    assert len(list((results / "cache" / "sft").glob("*/STAGE_DONE.json"))) == 1


@pytest.mark.slow
def test_killed_sweep_relaunched_skips_finished_cells(tmp_path):
    results = tmp_path / "results"
    sweep = ["--multirun", "seed=1,2,3", f"paths.results_dir={results}", *TINY, "sft.epochs=1",
             "hydra.sweep.dir=multirun"]
    proc = _popen(sweep, tmp_path, "killed.log")
    _kill_when(proc, lambda: len(list((results / "runs").glob("*.json"))) >= 1)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (results / "runs").glob("*.json")}
    assert 1 <= len(before) < 3
    rc, log = _run(sweep, tmp_path, "relaunch.log")
    assert rc == 0, log[-3000:]
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (results / "runs").glob("*.json")}
    assert sorted(after) == [f"tiny__arith__n__sft__greedy__seed{s}.json" for s in (1, 2, 3)]
    assert all(after[name] == before[name] for name in before)  # finished cells untouched
    assert log.count("already has a results record") == len(before)
    assert log.count("stage sft computed") + log.count("stage sft reused") == 3 - len(before)
    recs = _records(results)
    assert all(r["status"] == "complete" and len(r["epochs"]) == 1 for r in recs.values())
    assert len({r["epochs"][0]["train_loss"] for r in recs.values()}) == 3  # three seeds, three runs
