"""The Accelerator of a run (one device, DDP, or DeepSpeed ZeRO-2/3) and how frozen models are placed.

``accelerate=zero2|zero3`` builds a :class:`accelerate.utils.DeepSpeedPlugin` in code (bf16, the stage,
optional optimizer offload); the launcher only starts the processes (``scripts/accelerate/``). Under
DeepSpeed, clipping and gradient accumulation belong to the engine: :func:`configure_deepspeed` sets them
from the method's values before each ``prepare`` (SFT and ReFT differ). The frozen reference model is held
without optimizer state: a plain replica on the device, or under ZeRO-3 (where it was loaded partitioned)
a DeepSpeed inference engine (:func:`prepare_frozen`).
"""

from __future__ import annotations

from reft_exp.config import AccelerateConfig


def build_accelerator(cfg: AccelerateConfig, **kwargs):
    from accelerate import Accelerator

    plugin = None
    if cfg.zero_stage:
        if cfg.cpu:
            raise ValueError("accelerate.zero_stage needs GPUs (accelerate.cpu=true was set)")
        from accelerate.utils import DeepSpeedPlugin

        plugin = DeepSpeedPlugin(
            zero_stage=cfg.zero_stage, gradient_accumulation_steps=1, gradient_clipping=1.0,
            offload_optimizer_device="cpu" if cfg.offload_optimizer else "none",
            zero3_init_flag=cfg.zero_stage == 3 and cfg.zero3_init,
            zero3_save_16bit_model=True,  # save_model gathers a full 16-bit state dict
        )
    return Accelerator(cpu=cfg.cpu, mixed_precision=cfg.mixed_precision, deepspeed_plugin=plugin, **kwargs)


def uses_deepspeed(acc) -> bool:
    return getattr(acc.state, "deepspeed_plugin", None) is not None


def configure_deepspeed(acc, micro_batch_size: int, grad_accum: int, grad_clip: float) -> None:
    """Before ``acc.prepare`` of a training loop: DeepSpeed's batch, accumulation and clipping values."""
    if not uses_deepspeed(acc):
        return
    ds = acc.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = micro_batch_size
    ds["gradient_accumulation_steps"] = grad_accum
    ds["train_batch_size"] = micro_batch_size * grad_accum * acc.num_processes
    ds["gradient_clipping"] = grad_clip
    acc.gradient_accumulation_steps = grad_accum


def prepare_frozen(acc, model):
    """A model that is only run forward (ReFT's reference): no optimizer, no gradients, evaluation mode.

    Without DeepSpeed, or under ZeRO-2 (whose models are loaded whole), a replica on the device. Under
    ZeRO-3 the model was loaded partitioned, so it gets a DeepSpeed engine (stage 3, no optimizer) that
    gathers each layer's weights for the forward pass."""
    model.eval().requires_grad_(False)
    if not uses_deepspeed(acc) or acc.state.deepspeed_plugin.zero_stage != 3:
        return model.to(acc.device)
    import copy

    import deepspeed

    config = copy.deepcopy(acc.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    config["zero_optimization"].pop("offload_optimizer", None)
    config["train_micro_batch_size_per_gpu"] = config.get("train_micro_batch_size_per_gpu", 1)
    if config["train_micro_batch_size_per_gpu"] == "auto":
        config["train_micro_batch_size_per_gpu"] = 1
    config["train_batch_size"] = config["train_micro_batch_size_per_gpu"] * acc.num_processes
    config["gradient_accumulation_steps"] = 1
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine
