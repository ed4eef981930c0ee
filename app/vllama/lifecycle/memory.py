"""How much memory an engine needs, and where it fits: pure functions, no I/O.

The estimate (docs/lifecycle.md, "Sharing the GPU"):

    need = weights + KV cache + overhead

- weights: parameter count × bytes of the dtype the engine runs in (`--dtype`, else the
  model's own; vLLM's `auto` runs float32 models in 16 bits), or the weight files' size
  for quantized models and when the count is unknown;
- KV cache: 2 (K and V) × layers × KV heads × head size × bytes of the cache dtype
  (`--kv-cache-dtype fp8*`: 1, else the model's) per token, for `context` tokens of
  `num_parallel` sequences. Multi-head latent attention (DeepSeek's `kv_lora_rank`) keeps
  one compressed vector per token and layer instead; encoder-only models (BERT-style
  embedders) keep none;
- overhead: what an engine holds besides: activations, CUDA graphs and the CUDA context
  on a GPU; the interpreter, torch and vLLM's three processes on the CPU build (measured:
  about 2.5 GiB resident for the 1 MB demo model). `engine_overhead` overrides it.

With tensor parallelism the weights and the KV cache are split over the devices and each
device carries its own overhead. On a GPU the engine gets `--gpu-memory-utilization`
= need per device / device memory (what vLLM may take of that GPU, KV cache included), so
several engines share one GPU; on the CPU build it gets `--kv-cache-memory-bytes`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vllama.units import format_size, parse_size

GiB = 1024**3
MiB = 1024**2
DeviceKind = Literal["gpu", "cpu"]
DEFAULT_OVERHEAD: dict[DeviceKind, int] = {"gpu": 2 * GiB, "cpu": int(2.5 * GiB)}
MIN_KV_BYTES = 16 * MiB  # below this vLLM's block rounding alone can refuse to start
_DTYPE_BYTES = {
    "float32": 4,
    "float": 4,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "float8_e4m3fn": 1,
}
# Models that encode the whole input at once and keep no KV cache between steps.
ENCODER_ONLY = frozenset(
    {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "nomic_bert", "deberta-v2"}
)


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of `--flag V` or `--flag=V` in an engine's arguments (the last one)."""
    value: str | None = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _int(config: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a config (multimodal models nest it)."""
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, Mapping) else config


def model_context(config: Mapping[str, Any]) -> int | None:
    """The longest context the model was made for, from its config."""
    return _int(text_config(config), "max_position_embeddings", "max_sequence_length", "seq_length")


@dataclass(frozen=True)
class MemoryNeed:
    weights: int
    kv_cache: int
    overhead: int  # per device
    context: int
    sequences: int
    devices: int = 1  # tensor parallel size
    fixed_per_device: int | None = None  # --gpu-memory-utilization given: vLLM takes exactly this

    @property
    def per_device(self) -> int:
        if self.fixed_per_device is not None:
            return self.fixed_per_device
        return math.ceil((self.weights + self.kv_cache) / self.devices) + self.overhead

    @property
    def total(self) -> int:
        return self.per_device * self.devices

    def describe(self) -> str:
        if self.fixed_per_device is not None:
            return f"{format_size(self.total)} (its --gpu-memory-utilization)"
        parts = (
            f"weights {format_size(self.weights)}, KV cache {format_size(self.kv_cache)} for "
            f"{self.sequences} × {self.context} tokens, overhead {format_size(self.overhead)}"
        )
        per = f" on each of {self.devices} devices" if self.devices > 1 else ""
        return f"{format_size(self.total)} ({parts}{per})"


def _dtype_bytes(name: object) -> int | None:
    return _DTYPE_BYTES.get(str(name).lower()) if name else None


def weights_bytes(
    config: Mapping[str, Any], files_bytes: int, parameter_count: int | None, dtype_arg: str | None
) -> int:
    """Bytes the weights take in the engine (see the module docstring)."""
    if config.get("quantization_config") or not parameter_count:
        return files_bytes
    stored = text_config(config).get("torch_dtype") or config.get("dtype")
    wanted = dtype_arg if dtype_arg and dtype_arg != "auto" else stored
    size = _dtype_bytes(wanted)
    if size is None or (size == 4 and (not dtype_arg or dtype_arg == "auto")):
        size = 2  # vLLM's auto runs float32 checkpoints in 16 bits
    return parameter_count * size


def kv_bytes_per_token(config: Mapping[str, Any], cache_dtype_bytes: int) -> int | None:
    """KV cache bytes one token takes over all layers; 0 for encoder-only models; None when
    the config does not say enough."""
    cfg = text_config(config)
    if str(cfg.get("model_type", "")).lower() in ENCODER_ONLY:
        return 0
    layers = _int(cfg, "num_hidden_layers", "n_layer", "num_layers")
    if layers is None:
        return None
    rank = _int(cfg, "kv_lora_rank")
    if rank is not None:  # multi-head latent attention: one compressed entry per layer
        return layers * (rank + (_int(cfg, "qk_rope_head_dim") or 0)) * cache_dtype_bytes
    heads = _int(cfg, "num_attention_heads", "n_head")
    kv_heads = _int(cfg, "num_key_value_heads", "multi_query_group_num") or heads
    head_dim = _int(cfg, "head_dim")
    if head_dim is None and heads:
        hidden = _int(cfg, "hidden_size", "n_embd")
        head_dim = hidden // heads if hidden else None
    if kv_heads is None or head_dim is None:
        return None
    return 2 * layers * kv_heads * head_dim * cache_dtype_bytes


def estimate(
    config: Mapping[str, Any],
    *,
    files_bytes: int,
    parameter_count: int | None,
    engine_args: Sequence[str],
    context_length: int,
    num_parallel: int,
    overhead: int,
    device_total: int | None = None,
    cpu_kv_space: int | None = None,
) -> MemoryNeed:
    """What an engine for this model needs. `device_total` (bytes of one GPU) turns a given
    --gpu-memory-utilization into bytes; `cpu_kv_space` is VLLM_CPU_KVCACHE_SPACE in bytes
    when the environment sets it (it then wins over everything on the CPU build)."""
    tp = int(flag_value(engine_args, "--tensor-parallel-size") or 1)
    given_len = flag_value(engine_args, "--max-model-len")
    own = model_context(config)
    context = int(given_len) if given_len else min(context_length, own or context_length)
    dtype_arg = flag_value(engine_args, "--dtype")
    weights = weights_bytes(config, files_bytes, parameter_count, dtype_arg)
    cache_dtype = flag_value(engine_args, "--kv-cache-dtype") or "auto"
    model_bytes = _dtype_bytes(
        dtype_arg if dtype_arg and dtype_arg != "auto" else text_config(config).get("torch_dtype")
    )
    if cache_dtype.startswith("fp8"):
        cache_bytes = 1
    elif dtype_arg and dtype_arg != "auto":
        cache_bytes = model_bytes or 2
    else:  # auto: float32 checkpoints run (and cache) in 16 bits
        cache_bytes = min(model_bytes or 2, 2)
    given_kv = flag_value(engine_args, "--kv-cache-memory-bytes")
    if cpu_kv_space is not None:
        kv = cpu_kv_space
    elif given_kv:
        kv = int(float(given_kv)) * tp  # per GPU in vLLM's terms
    else:
        per_token = kv_bytes_per_token(config, cache_bytes)
        # Unknown shape: a quarter of the weights, a common share for 4k contexts.
        kv = per_token * context * num_parallel if per_token is not None else weights // 4
        if per_token != 0:
            kv = max(kv, MIN_KV_BYTES)
    fixed: int | None = None
    util = flag_value(engine_args, "--gpu-memory-utilization")
    if util and device_total:
        fixed = math.ceil(float(util) * device_total)
    return MemoryNeed(
        weights=weights,
        kv_cache=kv,
        overhead=overhead,
        context=context,
        sequences=num_parallel,
        devices=tp,
        fixed_per_device=fixed,
    )


def gpu_memory_utilization(need_per_device: int, device_total: int) -> float:
    """vLLM's --gpu-memory-utilization for an engine that needs `need_per_device` bytes of a
    `device_total`-byte GPU: rounded up to the hundredth, at most 0.99."""
    share = math.ceil(need_per_device / device_total * 100) / 100
    return min(max(share, 0.01), 0.99)


# --- devices and budgets --------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """One place engines take memory from: a GPU, or the host on the CPU build."""

    index: int  # GPU index (CUDA_VISIBLE_DEVICES); 0 for the host
    kind: DeviceKind
    total: int  # bytes
    name: str = ""

    @property
    def label(self) -> str:
        return f"GPU {self.index}" if self.kind == "gpu" else "host memory"


def budget_bytes(budget: str, device_total: int) -> int:
    """`90%` of the device, or an absolute size (at most the device's memory)."""
    text = budget.strip()
    if text.endswith("%"):
        return int(device_total * float(text[:-1]) / 100)
    return min(parse_size(text), device_total)


def choose_devices(
    need_per_device: int,
    count: int,
    devices: Sequence[Device],
    room: Mapping[int, int],
) -> tuple[int, ...] | None:
    """`count` devices that each have `need_per_device` bytes of room (budget left, and
    memory actually free), the roomiest first; None when they are not there."""
    fitting = sorted(
        (d for d in devices if room.get(d.index, 0) >= need_per_device),
        key=lambda d: (-room.get(d.index, 0), d.index),
    )
    if len(fitting) < count:
        return None
    return tuple(sorted(d.index for d in fitting[:count]))
