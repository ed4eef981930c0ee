"""Where engines take memory from, and how much of it is free now: the GPUs NVML sees, or
the host's memory on the CPU build (/proc/meminfo)."""

from __future__ import annotations

from pathlib import Path

from vllama.lifecycle.memory import Device
from vllama.observability.gpu import probe_gpus


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (empty where there is none)."""
    out: dict[str, int] = {}
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def detect_devices(cpu_build: bool) -> list[Device]:
    """Every GPU (GPU builds that see one), else the host as one device."""
    if not cpu_build:
        found = probe_gpus()
        if found.gpus:
            return [Device(g.index, "gpu", g.memory_total, g.name) for g in found.gpus]
    return [Device(0, "cpu", _meminfo().get("MemTotal", 0), "host")]


def free_memory(devices: list[Device]) -> dict[int, int | None]:
    """Bytes free on each device now (None: unknown). On the host, MemAvailable."""
    if devices and devices[0].kind == "gpu":
        free = {g.index: g.memory_free for g in probe_gpus().gpus}
        return {d.index: free.get(d.index) for d in devices}
    available = _meminfo().get("MemAvailable")
    return {d.index: available for d in devices}
