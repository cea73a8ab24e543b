"""Rollout engines: one interface for every place that generates (greedy evaluation, sampling, RL rollouts).

An engine takes left-padded prompt ids and returns what ``model.generate`` returns: ``[B * k, P + T]`` rows,
the prompt columns first, then the generated tokens, right-padded with the pad id after each EOS. The
sampling semantics are the same in every engine (temperature, top-k with 0 = off, top-p, greedy when
``do_sample`` is false), so switching engines changes speed, not the distribution. Chosen by
``rollout.engine`` (``conf/rollout/``):

* ``hf``: plain ``model.generate`` with the dynamic KV cache (the baseline). With ``preallocate_cache`` (the
  default) the dynamic cache keeps each layer's keys and values in one buffer of prompt + ``max_new_tokens``
  positions and writes each step's into it, instead of concatenating the whole cache at every step
  (:class:`BufferedCache`): attention sees tensors of the same shapes and values, the outputs are the same.
* ``hf_static``: ``model.generate`` with a static KV cache whose length is rounded up to
  ``cache_pad_multiple`` (so later calls reuse the same shapes) and, on a GPU, a ``torch.compile``'d decode
  step (CUDA graphs, ``compile_mode``). The optimizer updates the weights in place, so compiled graphs stay
  valid after every PPO update and nothing has to be re-synced. On CPU the decode step is compiled only
  with ``compile_cpu`` (the static-cache path runs either way).
* ``vllm``: optional (``pip install vllm``); absent, it fails with a clear message. The policy's weights are
  pushed into the vLLM engine before every generation (they change after each update).

The app installs the configured engine as the process default (:func:`set_default_engine`);
``reft_exp.generation`` and ``reft_exp.rl.rollout`` use it unless a call passes ``engine=``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Iterator

import torch

from reft_exp.config import RolloutConfig

log = logging.getLogger(__name__)

ENGINES = ("hf", "hf_static", "vllm")


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def generation_autocast(model, mixed_precision: str):
    """Autocast to the process's mixed precision (``accelerate.mixed_precision``) while generating with a model
    whose weights are float32 master weights (:func:`reft_exp.models.trainable_dtype`): the rollouts and
    evaluations of a trained model then compute in bf16 as its training forward does (accelerate's autocast
    wraps only the prepared module's forward, not the inner LM that ``generate`` runs), and as the official bf16
    runs generate. A no-op for float32 runs and for weights already in bf16 / fp16."""
    dtype = AUTOCAST_DTYPES.get(mixed_precision)
    param = next(model.parameters())
    if dtype is None or param.dtype != torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(param.device.type, dtype=dtype)


def sampling_kwargs(do_sample: bool, temperature: float, top_k: int, top_p: float) -> dict:
    """``generate`` keyword arguments of one decoding mode, identical for every HF-based engine."""
    if do_sample:
        return {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p}
    # greedy: silence the "sampling flags set but do_sample=False" warnings of the generation config
    return {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}


try:  # the layered cache API (transformers >= 4.56); older versions generate with their own dynamic cache
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
except ImportError:  # pragma: no cover - depends on the installed transformers
    DynamicLayer = None


if DynamicLayer is not None:

    class BufferedLayer(DynamicLayer):
        """A dynamic cache layer whose ``keys`` / ``values`` are views of the first positions of a buffer: ``update``
        writes the new positions in place (grown by ``capacity`` positions when full) where ``DynamicLayer``
        concatenates the whole cache at every step, a copy that grows with the sequence (22% of a profiled tiny
        sampling pass; 1.03-1.13x faster unprofiled on the tiny model: benchmarks/RESULTS.md). Attention gets the
        same values in the same shapes."""

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = max(int(capacity), 1)
            self._k: torch.Tensor | None = None
            self._v: torch.Tensor | None = None
            self._n = 0

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor | None = None) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device
            self._k = self._v = None
            self._n = 0
            self.is_initialized = True  # transformers >= 4.58 reads it; 4.56-4.57 test `keys is None`

        def _reserve(self, like_k: torch.Tensor, like_v: torch.Tensor, total: int) -> None:
            if self._k is not None and total <= self._k.shape[-2]:
                return
            size = self.capacity * math.ceil(total / self.capacity)
            k = like_k.new_empty((*like_k.shape[:-2], size, like_k.shape[-1]))
            v = like_v.new_empty((*like_v.shape[:-2], size, like_v.shape[-1]))
            if self._n:
                k[..., : self._n, :] = self._k[..., : self._n, :]
                v[..., : self._n, :] = self._v[..., : self._n, :]
            self._k, self._v = k, v

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            if self._k is None:
                self.lazy_initialization(key_states, value_states)
            n, end = self._n, self._n + key_states.shape[-2]
            self._reserve(key_states, value_states, end)
            self._k[..., n:end, :] = key_states
            self._v[..., n:end, :] = value_states
            self._n = end
            self.keys, self.values = self._k[..., :end, :], self._v[..., :end, :]
            return self.keys, self.values

        def _adopt(self) -> None:
            """After an operation of ``DynamicLayer`` replaced ``keys`` / ``values`` (crop, batch selection,
            repetition): they become the buffer's content."""
            self._k, self._v = self.keys, self.values
            self._n = 0 if self.keys is None or self.keys.dim() < 2 else self.keys.shape[-2]

        def reset(self) -> None:
            super().reset()
            self._k = self._v = None
            self._n = 0

        def crop(self, tokens_to_remove: int) -> None:
            super().crop(tokens_to_remove)
            self._adopt()

        def batch_repeat_interleave(self, repeats: int) -> None:
            super().batch_repeat_interleave(repeats)
            self._adopt()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            super().batch_select_indices(indices)
            self._adopt()

    class BufferedCache(DynamicCache):
        """A :class:`DynamicCache` of :class:`BufferedLayer` (one per decoder layer), each reserving ``capacity``
        positions at a time: pass prompt width + max new tokens and a generation never copies its cache."""

        def __init__(self, num_layers: int, capacity: int):
            Cache.__init__(self, layers=[BufferedLayer(capacity) for _ in range(num_layers)])


def preallocated_cache(model, capacity: int):
    """A :class:`BufferedCache` for ``model`` of ``capacity`` positions; None where the model or the installed
    transformers does not use the layered dynamic cache (then ``generate`` makes its own)."""
    if DynamicLayer is None:
        return None
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        return None  # sliding-window / linear-attention layers keep their own cache classes
    return BufferedCache(config.num_hidden_layers, capacity)


def cache_kwarg(model) -> str:
    """The name under which ``generate`` takes a cache: ``cache`` (transformers >= 5.x), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


class HFEngine:
    """``model.generate`` as it is (dynamic cache; its buffered form with ``preallocate_cache``)."""

    name = "hf"

    def __init__(self, cfg: RolloutConfig | None = None, mixed_precision: str = "no"):
        self.cfg = cfg or RolloutConfig(engine=self.name)
        self.mixed_precision = mixed_precision  # accelerate.mixed_precision of the process (generation_autocast)

    def extra_kwargs(self, model, width: int, max_new_tokens: int) -> dict:
        cache = preallocated_cache(model, width + max_new_tokens) if self.cfg.preallocate_cache else None
        return {} if cache is None else {cache_kwarg(model): cache}

    @torch.no_grad()
    def generate(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                 do_sample: bool, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 num_return_sequences: int = 1, pad_token_id: int, eos_token_id: int) -> torch.Tensor:
        kwargs = sampling_kwargs(do_sample, temperature, top_k, top_p)
        kwargs.update(self.extra_kwargs(model, input_ids.shape[1], max_new_tokens))
        with generation_autocast(model, self.mixed_precision):
            return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                  num_return_sequences=num_return_sequences, pad_token_id=pad_token_id,
                                  eos_token_id=eos_token_id, **kwargs)


class HFStaticEngine(HFEngine):
    """``model.generate`` with a static KV cache and (on GPU, or with ``compile_cpu``) a compiled decode step."""

    name = "hf_static"

    def compiles(self, model) -> bool:
        device = next(model.parameters()).device
        return self.cfg.compile and (device.type != "cpu" or self.cfg.compile_cpu)

    def cache_length(self, width: int, max_new_tokens: int) -> int:
        mult = max(self.cfg.cache_pad_multiple, 1)
        return math.ceil((width + max_new_tokens) / mult) * mult

    def extra_kwargs(self, model, width: int, max_new_tokens: int) -> dict:
        from transformers import GenerationConfig
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            raise RuntimeError("rollout.engine=hf_static cannot run on ZeRO-3 partitioned weights; use "
                               "rollout.engine=hf with accelerate=zero3")
        kwargs: dict = {"cache_implementation": "static"}
        if hasattr(GenerationConfig(), "max_cache_len"):  # transformers >= 5.2x: one cache length for all calls
            kwargs["max_cache_len"] = self.cache_length(width, max_new_tokens)
        if self.compiles(model):
            from transformers import CompileConfig

            compile_config = CompileConfig(mode=self.cfg.compile_mode)
            if next(model.parameters()).device.type == "cpu":
                compile_config._compile_all_devices = True
            kwargs["compile_config"] = compile_config
        else:
            kwargs["disable_compile"] = True
        return kwargs


class VLLMEngine:
    """vLLM generation; the policy's current weights are loaded into vLLM before every call."""

    name = "vllm"

    def __init__(self, cfg: RolloutConfig | None = None):
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ImportError("rollout.engine=vllm: vllm is not installed (pip install vllm), or use "
                              "rollout.engine=hf or hf_static") from None
        self.cfg = cfg or RolloutConfig(engine=self.name)
        self._llm = None
        self._source = None

    def _engine_for(self, model):
        from vllm import LLM

        if self._llm is None or self._source is not model:
            path = model.config._name_or_path
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
            self._llm = LLM(model=path, dtype=dtype, gpu_memory_utilization=self.cfg.vllm_gpu_memory_utilization,
                            enforce_eager=not self.cfg.compile)
            self._source = model
        self._sync_weights(model)
        return self._llm

    def _sync_weights(self, model) -> None:
        """Copy the policy's weights into vLLM's copy of the model (names are the HF checkpoint's)."""
        weights = list(model.state_dict().items())
        engine = self._llm.llm_engine
        if hasattr(self._llm, "collective_rpc"):  # vLLM >= 0.7 (V1 and V0)
            self._llm.collective_rpc(_vllm_load_weights, args=(weights,))
        else:
            engine.model_executor.driver_worker.model_runner.model.load_weights(weights)

    @torch.no_grad()
    def generate(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                 do_sample: bool, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 num_return_sequences: int = 1, pad_token_id: int, eos_token_id: int) -> torch.Tensor:
        from vllm import SamplingParams

        llm = self._engine_for(model)
        params = SamplingParams(n=num_return_sequences, temperature=temperature if do_sample else 0.0,
                                top_k=top_k if (do_sample and top_k > 0) else -1,
                                top_p=top_p if do_sample else 1.0, max_tokens=max_new_tokens,
                                stop_token_ids=[eos_token_id], ignore_eos=False)
        prompts = [{"prompt_token_ids": row[mask.bool()].tolist()} for row, mask in zip(input_ids, attention_mask)]
        outs = llm.generate(prompts, params, use_tqdm=False)
        gen = [list(c.token_ids) for o in outs for c in o.outputs]
        width, longest = input_ids.shape[1], max((len(g) for g in gen), default=0)
        result = torch.full((len(gen), width + longest), pad_token_id, dtype=torch.long)
        result[:, :width] = input_ids.cpu().repeat_interleave(num_return_sequences, dim=0)
        for i, g in enumerate(gen):
            result[i, width : width + len(g)] = torch.tensor(g, dtype=torch.long)
        return result.to(input_ids.device)


def _vllm_load_weights(worker, weights) -> None:  # runs inside each vLLM worker
    worker.model_runner.model.load_weights(weights)


def make_engine(cfg: RolloutConfig | None, mixed_precision: str = "no"):
    """The engine named by ``cfg.engine`` (None = the ``hf`` baseline); the HF engines generate under
    :func:`generation_autocast` of ``mixed_precision``."""
    cfg = cfg or RolloutConfig()
    if cfg.engine == "hf":
        return HFEngine(cfg, mixed_precision)
    if cfg.engine == "hf_static":
        return HFStaticEngine(cfg, mixed_precision)
    if cfg.engine == "vllm":
        return VLLMEngine(cfg)
    raise ValueError(f"rollout.engine={cfg.engine!r} is not one of {list(ENGINES)}")


_DEFAULT: list = []


def default_engine():
    """The process-wide engine installed by the app (``hf`` when none was)."""
    if not _DEFAULT:
        _DEFAULT.append(HFEngine())
    return _DEFAULT[0]


def set_default_engine(engine) -> None:
    _DEFAULT[:] = [engine]


@contextlib.contextmanager
def using_engine(engine) -> Iterator:
    """Temporarily make ``engine`` the default (benchmarks, tests)."""
    previous = list(_DEFAULT)
    set_default_engine(engine)
    try:
        yield engine
    finally:
        _DEFAULT[:] = previous
