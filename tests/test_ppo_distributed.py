"""Two CPU processes (gloo, via ``accelerate.debug_launcher``) reproduce one process on the whole batch.

Checks that (1) ``masked_whiten`` with an ``Accelerator`` uses global statistics, even when the processes hold
different padded widths, (2) the PPO policy + value loss with the batch split across processes, and its
gradients averaged by DDP, equals the loss and gradients of one process on the concatenated batch, (3) a real
SFT epoch (``train_supervised``, length-bucketed batches) on 2 processes x batch 2 gives the weights of one
process x batch 2 x grad_accum 2, and (4) a real ReFT ``ppo_step`` (rollout, reference, whitening, 2 PPO
updates) on 2 processes x 2 questions moves the weights as one process on the 4 questions does.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import run_config

from reft_exp.rl.ppo_core import gae_advantages, masked_whiten, ppo_policy_loss, ppo_value_loss

pytestmark = pytest.mark.seconds(17)  # its measured time in `make test`: orders the collection (conftest)

VF_COEF = 5.0


# What the worker processes' forkserver imports once (a worker forked from it skips ~4 s of imports).
FORKSERVER_PRELOAD = ["torch", "transformers", "transformers.models.llama.modeling_llama", "accelerate"]


class _InEnvironment:
    """A worker entry point that first takes the launching process's environment: forkserver children inherit
    the server's environment, not the one ``patch_environment`` set up for this launch."""

    def __init__(self, env: dict[str, str], function):
        self.env, self.function = env, function

    def __call__(self, index: int, *args):
        os.environ.clear()
        os.environ.update(self.env)
        return self.function(index, *args)


def debug_launcher(function, args=(), num_processes: int = 2) -> None:
    """``accelerate.debug_launcher`` with workers from a *forkserver*. Accelerate forks, and a fork taken after
    the test process has run torch code (its OpenMP pool is live) can deadlock the children: several launches
    in one pytest process hung. The forkserver is a clean process that has only imported the libraries
    (FORKSERVER_PRELOAD), so its forks start clean, as spawned workers do, without importing torch again."""
    import tempfile

    import torch.multiprocessing as mp
    from accelerate.utils import PrepareForLaunch, patch_environment

    mp.get_context("forkserver").set_forkserver_preload(FORKSERVER_PRELOAD)
    with tempfile.TemporaryDirectory() as tmp, patch_environment(
        world_size=num_processes, master_addr="127.0.0.1", master_port="29500", accelerate_mixed_precision="no",
        accelerate_debug_rdv_file=str(Path(tmp) / "rdv"), accelerate_use_cpu="yes", gloo_socket_ifname="lo",
    ):
        entry = _InEnvironment(dict(os.environ), PrepareForLaunch(function, debug=True))
        mp.start_processes(entry, args=args, nprocs=num_processes, start_method="forkserver")


LENGTHS = [7, 3, 5, 1, 6, 2]  # response lengths of the 6 sequences; rank 0 gets 0-2, rank 1 gets 3-5
WIDTH = 7
FEATURES = 4


class _TinyPolicyCritic(torch.nn.Module):
    """Log-probs and values as linear functions of fixed features, so gradients are easy to compare."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.w = torch.nn.Parameter(torch.randn(FEATURES, generator=gen) * 0.3)
        self.u = torch.nn.Parameter(torch.randn(FEATURES, generator=gen))

    def forward(self, feats: torch.Tensor, logp_old: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logp_old + feats @ self.w, feats @ self.u


def _global_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    batch, width = len(LENGTHS), WIDTH
    mask = (torch.arange(width)[None, :] < torch.tensor(LENGTHS)[:, None]).float()
    rewards = torch.randn(batch, width, generator=gen) * 0.1 * mask
    values_old = torch.randn(batch, width, generator=gen) * mask
    adv, returns = gae_advantages(rewards, values_old, mask)
    return {
        "mask": mask,
        "adv": adv,
        "returns": returns,
        "values_old": values_old,
        "logp_old": -torch.rand(batch, width, generator=gen) * 3,
        "feats": torch.randn(batch, width, FEATURES, generator=gen),
    }


def _loss(model: torch.nn.Module, b: dict[str, torch.Tensor], adv: torch.Tensor) -> torch.Tensor:
    logp_new, values_new = model(b["feats"], b["logp_old"])
    pg, _ = ppo_policy_loss(logp_new, b["logp_old"], adv, b["mask"])
    vf, _ = ppo_value_loss(values_new, b["values_old"], b["returns"], b["mask"])
    return pg + VF_COEF * vf


def _worker() -> None:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # a forked child may inherit the parent's state
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2
    rank = accelerator.process_index

    full = _global_batch()
    rows = slice(3 * rank, 3 * rank + 3)
    local_width = max(LENGTHS[rows])  # rank 0: 7 columns, rank 1: 6 columns (different padded widths)

    # (1) whitening: local slice with global statistics == slice of the single-process result
    ref_adv = masked_whiten(full["adv"], full["mask"])
    local_adv = masked_whiten(
        full["adv"][rows, :local_width], full["mask"][rows, :local_width], accelerator=accelerator
    )
    torch.testing.assert_close(local_adv, ref_adv[rows, :local_width], atol=1e-6, rtol=0)
    # and it really is global: the process-local statistics would differ
    local_only = masked_whiten(full["adv"][rows, :local_width], full["mask"][rows, :local_width])
    assert not torch.allclose(local_only, local_adv, atol=1e-3)

    # (2) losses and DDP-averaged gradients
    reference = _TinyPolicyCritic()
    model = copy.deepcopy(reference)
    ref_loss = _loss(reference, full, ref_adv)
    ref_loss.backward()

    ddp_model = accelerator.prepare(model)
    local = {k: v[rows] for k, v in full.items()}
    local_loss = _loss(ddp_model, local, ref_adv[rows])
    accelerator.backward(local_loss)

    mean_loss = accelerator.reduce(local_loss.detach().clone(), reduction="mean")
    torch.testing.assert_close(mean_loss, ref_loss.detach(), atol=1e-6, rtol=1e-6)
    for name in ("w", "u"):
        ref_grad = getattr(reference, name).grad
        assert ref_grad is not None and ref_grad.abs().sum() > 0
        torch.testing.assert_close(getattr(model, name).grad, ref_grad, atol=1e-6, rtol=1e-5)


def test_split_batch_matches_single_process() -> None:
    debug_launcher(_worker, num_processes=2)


# ---------------------------------------------------------------------------------------- real SFT / ReFT
N_SFT, N_RL = 8, 4  # training examples of the SFT epoch, questions of the PPO step


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from reft_exp.config import TinyModelConfig
    from reft_exp.data.arith import generate_arith
    from reft_exp.models import build_tiny_model

    root = tmp_path_factory.mktemp("dist")
    splits = generate_arith(3, 200, 4, "n")
    texts = [t for r in splits["train"] for t in (r["question"], r["answer_cot"])]
    build_tiny_model(root / "model", texts, TinyModelConfig(name="tiny", kind="tiny"))
    return root, splits


def _cfg(root: Path, overrides: list[str]):
    return run_config(["accelerate=cpu", "progress=false", "inference.max_new_tokens=6", "sft.eval_batch_size=4",
                       *overrides], root / "results")


def _ctx(cfg, splits):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from reft_exp.context import RunContext
    from reft_exp.tracking import Tracker

    AcceleratorState._reset_state(reset_partial_state=True)
    acc = Accelerator(cpu=True)
    return RunContext(cfg=cfg, accelerator=acc, splits=splits, tracker=Tracker())


def _sft_worker(cfg, root: Path, splits: dict, out: Path) -> None:
    from reft_exp.methods.sft import train_supervised

    ctx = _ctx(cfg, splits)
    epochs = range(1, cfg.sft.last_epoch + 1)
    res = train_supervised(ctx, cfg.sft, splits["train"], str(root / "model"), out, save_epochs=epochs)
    if ctx.accelerator.is_main_process:
        (out / "result.json").write_text(json.dumps(res))


def _ppo_worker(cfg, root: Path, records: list, out: Path) -> None:
    from reft_exp.distributed import prepare_frozen
    from reft_exp.methods.reft import ppo_step
    from reft_exp.models import load_causal_lm, load_tokenizer
    from reft_exp.rl.policy import PolicyWithValue

    ctx = _ctx(cfg, {})
    acc, rc = ctx.accelerator, cfg.method
    folder = str(root / "model")
    tok = load_tokenizer(folder, cfg.model)
    torch.manual_seed(0)  # the value head's init (rank 0's is broadcast by DDP)
    policy = PolicyWithValue(load_causal_lm(folder, cfg.model), load_causal_lm(folder, cfg.model))
    before = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    optimizer = torch.optim.AdamW(policy.parameters(), lr=rc.lr)
    policy, optimizer = acc.prepare(policy, optimizer)
    ref = prepare_frozen(acc, load_causal_lm(folder, cfg.model))
    per = len(records) // acc.num_processes
    stats = ppo_step(ctx, rc, policy, ref, optimizer, tok, records[acc.process_index * per:][:per])
    score = acc.reduce(torch.tensor(stats["score"]), reduction="mean").item()
    if acc.is_main_process:
        after = acc.unwrap_model(policy).state_dict()
        torch.save({"delta": {k: after[k] - before[k] for k in before}, "score": score}, out)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_sft_epoch_two_processes_match_one_with_grad_accum(tiny_setup) -> None:
    root, splits = tiny_setup
    data = {"train": splits["train"][:N_SFT], "test": splits["test"]}
    common = ["sft.epochs=1", "sft.batch_size=2", "sft.length_bucketing=true", "sft.warmup_ratio=0"]
    one = _cfg(root, [*common, "sft.grad_accum=2"])
    two = _cfg(root, [*common, "sft.grad_accum=1"])
    debug_launcher(_sft_worker, args=(one, root, data, root / "sft1"), num_processes=1)
    debug_launcher(_sft_worker, args=(two, root, data, root / "sft2"), num_processes=2)
    init, w1, w2 = _weights(root / "model"), _weights(root / "sft1" / "epoch_1"), _weights(root / "sft2" / "epoch_1")
    moved = max((w1[k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-3  # one process really trained (2 optimizer steps at lr 3e-3)
    for k in init:
        torch.testing.assert_close(w2[k], w1[k], atol=2e-6, rtol=1e-4)
    for n in ("sft1", "sft2"):
        row = json.loads((root / n / "result.json").read_text())["epochs"][0]
        assert row["step"] == 2 and row["tokens_per_s"] > 0


def test_sft_saved_on_one_process_resumes_on_two(tiny_setup) -> None:
    """The runner's state (accelerate save_state: weights, AdamW, the schedule in global steps, the data order)
    carries over a change of process count (not under DeepSpeed, docs/reliability.md): epoch 1 on one process
    x batch 2 x accum 2, epoch 2 resumed on two processes x batch 2 ends with the weights of two epochs on one
    process."""
    root, splits = tiny_setup
    data = {"train": splits["train"][:N_SFT], "test": splits["test"]}
    common = ["sft.epochs=2", "sft.batch_size=2", "sft.length_bucketing=true", "sft.warmup_ratio=0.5"]
    debug_launcher(_sft_worker, args=(_cfg(root, [*common, "sft.grad_accum=2"]), root, data, root / "straight"),
                   num_processes=1)
    debug_launcher(_sft_worker, args=(_cfg(root, [*common, "sft.grad_accum=2", "sft.train_epochs=1"]), root, data,
                                      root / "switched"), num_processes=1)
    debug_launcher(_sft_worker, args=(_cfg(root, [*common, "sft.grad_accum=1"]), root, data, root / "switched"),
                   num_processes=2)
    straight, switched = (json.loads((root / n / "result.json").read_text()) for n in ("straight", "switched"))
    assert [r["epoch"] for r in switched["epochs"]] == [1, 2] and switched["steps"] == straight["steps"] == 4
    assert [r["lr"] for r in switched["epochs"]] == pytest.approx([r["lr"] for r in straight["epochs"]])
    w1, w2 = _weights(root / "straight" / "epoch_2"), _weights(root / "switched" / "epoch_2")
    epoch1 = _weights(root / "straight" / "epoch_1")
    assert max((w1[k] - epoch1[k]).abs().max().item() for k in w1) > 1e-4  # epoch 2 really trained
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=2e-6, rtol=1e-4)


def test_reft_ppo_step_two_processes_match_one(tiny_setup) -> None:
    root, splits = tiny_setup
    # top_k 1: the "sampled" rollout is the greedy one, so both layouts roll out the same responses
    cfg = _cfg(root, ["method=reft", "method.top_k=1", "method.max_length=90", "method.lr=1e-3",
                      "method.batch_size=2"])
    # Questions of one prompt length: the response budget is max_length minus the batch's padded prompt
    # width (as upstream), so a batch split across processes must not change that width.
    from reft_exp.models import load_tokenizer
    from reft_exp.rl.rollout import rl_prompts

    tok = load_tokenizer(root / "model", cfg.model)
    by_width: dict[int, list] = {}
    for r in splits["train"]:
        by_width.setdefault(len(tok(rl_prompts([r], "n")[0])["input_ids"]), []).append(r)
    records = max(by_width.values(), key=len)[:N_RL]
    assert len(records) == N_RL
    debug_launcher(_ppo_worker, args=(cfg, root, records, root / "ppo1.pt"), num_processes=1)
    debug_launcher(_ppo_worker, args=(cfg, root, records, root / "ppo2.pt"), num_processes=2)
    one, two = torch.load(root / "ppo1.pt"), torch.load(root / "ppo2.pt")
    assert two["score"] == pytest.approx(one["score"])
    assert max(d.abs().max().item() for d in one["delta"].values()) > 1e-4  # the step moved the weights
    assert one["delta"]["v_head.weight"].abs().max() > 1e-4
    for k, d in one["delta"].items():
        torch.testing.assert_close(two["delta"][k], d, atol=1e-6, rtol=1e-3)
