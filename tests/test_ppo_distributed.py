"""Two CPU processes (gloo, via ``accelerate.debug_launcher``) reproduce one process on the whole batch.

Checks that (1) ``masked_whiten`` with an ``Accelerator`` uses global statistics, even when the processes hold
different padded widths, and (2) the PPO policy + value loss with the batch split across processes, and its
gradients averaged by DDP, equals the loss and gradients of one process on the concatenated batch.
"""

from __future__ import annotations

import copy

import torch
from accelerate import debug_launcher

from reft_exp.rl.ppo_core import gae_advantages, masked_whiten, ppo_policy_loss, ppo_value_loss

VF_COEF = 5.0
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
