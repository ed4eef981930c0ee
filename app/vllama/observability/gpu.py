"""GPU facts for /health and `vllama doctor`, through NVML (nvidia-ml-py).

NVML is optional: without the package, the driver or a GPU the answer is an empty list
and a reason, never an exception.
"""

from __future__ import annotations

import contextlib
import importlib
from types import ModuleType
from typing import Any

GpuInfo = dict[str, Any]


def _load_nvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def gpu_report(nvml: ModuleType | None = None) -> tuple[list[GpuInfo], str | None]:
    """(GPUs, None) or ([], why there are none). `nvml` replaces `pynvml` in tests."""
    nv = nvml if nvml is not None else _load_nvml()
    if nv is None:
        return [], "NVML not available: install nvidia-ml-py (the `gpu` extra)"
    try:
        nv.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return [], f"no NVIDIA driver or GPU: {exc}"
    try:
        gpus: list[GpuInfo] = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            util = nv.nvmlDeviceGetUtilizationRates(h)
            gpus.append(
                {
                    "index": i,
                    "name": _text(nv.nvmlDeviceGetName(h)),
                    "memory_used_bytes": int(mem.used),
                    "memory_total_bytes": int(mem.total),
                    "utilization_percent": int(util.gpu),
                    "temperature_celsius": int(
                        nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)
                    ),
                }
            )
    except Exception as exc:
        return [], f"NVML query failed: {exc}"
    finally:
        with contextlib.suppress(Exception):  # shutting down is best effort
            nv.nvmlShutdown()
    if not gpus:
        return [], "NVML found no GPU"
    return gpus, None


def gpu_info(nvml: ModuleType | None = None) -> list[GpuInfo]:
    """The GPUs NVML sees; empty when there are none (see `gpu_report` for the reason)."""
    return gpu_report(nvml)[0]
