"""GPU facts for /health/ready and `vllama doctor`, through NVML (nvidia-ml-py): one probe.

NVML is optional: without the package, the driver or a GPU the answer is an empty list
and a reason, never an exception.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

GpuInfo = dict[str, Any]


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_total: int  # bytes
    memory_used: int
    memory_free: int
    utilization_percent: int
    temperature_celsius: int


@dataclass(frozen=True)
class GpuProbe:
    gpus: list[Gpu] = field(default_factory=list)
    driver: str | None = None
    reason: str | None = None  # why there are no GPUs; None when there are


def _load_nvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def probe_gpus(nvml: ModuleType | None = None) -> GpuProbe:
    """What NVML sees. `nvml` replaces `pynvml` in tests."""
    nv = nvml if nvml is not None else _load_nvml()
    if nv is None:
        return GpuProbe(reason="NVML not available: install nvidia-ml-py (the `gpu` extra)")
    try:
        nv.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return GpuProbe(reason=f"no NVIDIA driver or GPU: {exc}")
    driver: str | None = None
    try:
        with contextlib.suppress(Exception):  # the version is a detail; the GPUs are not
            driver = _text(nv.nvmlSystemGetDriverVersion())
        gpus: list[Gpu] = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            gpus.append(
                Gpu(
                    index=i,
                    name=_text(nv.nvmlDeviceGetName(h)),
                    memory_total=int(mem.total),
                    memory_used=int(mem.used),
                    memory_free=int(mem.free),
                    utilization_percent=int(nv.nvmlDeviceGetUtilizationRates(h).gpu),
                    temperature_celsius=int(
                        nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)
                    ),
                )
            )
    except Exception as exc:
        return GpuProbe(driver=driver, reason=f"NVML query failed: {exc}")
    finally:
        with contextlib.suppress(Exception):  # shutting down is best effort
            nv.nvmlShutdown()
    if not gpus:
        return GpuProbe(driver=driver, reason="NVML found no GPU")
    return GpuProbe(gpus=gpus, driver=driver)


def gpu_report(nvml: ModuleType | None = None) -> tuple[list[GpuInfo], str | None]:
    """(GPUs, None) or ([], why there are none), as /health/ready reports them."""
    found = probe_gpus(nvml)
    gpus = [
        {
            "index": g.index,
            "name": g.name,
            "memory_used_bytes": g.memory_used,
            "memory_total_bytes": g.memory_total,
            "utilization_percent": g.utilization_percent,
            "temperature_celsius": g.temperature_celsius,
        }
        for g in found.gpus
    ]
    return gpus, found.reason


def gpu_info(nvml: ModuleType | None = None) -> list[GpuInfo]:
    """The GPUs NVML sees; empty when there are none (see `gpu_report` for the reason)."""
    return gpu_report(nvml)[0]
