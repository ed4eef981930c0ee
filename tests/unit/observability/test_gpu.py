"""GPU facts through NVML: the real "no GPU" path on this machine, and the NVML path with a
stand-in module object in place of `pynvml` (no GPU here to drive it for real)."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import pytest

from vllama.observability.gpu import Gpu, GpuProbe, gpu_info, gpu_report, probe_gpus


class NvmlError(Exception):
    pass


def nvml_standin(count: int = 2, fail_init: bool = False) -> ModuleType:
    """A stand-in for `pynvml` with the calls gpu.py makes (names as in nvidia-ml-py)."""
    nv = ModuleType("pynvml_standin")
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if fail_init:
            raise NvmlError("NVML Shared Library Not Found")

    nv.__dict__.update(
        calls=calls,
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: b"560.35.03",
        nvmlDeviceGetCount=lambda: count,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3" if h == 0 else "NVIDIA L4",
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(
            used=(h + 1) * 2**30, total=80 * 2**30, free=(78 - h) * 2**30
        ),
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=37 + h, memory=5),
        nvmlDeviceGetTemperature=lambda h, sensor: 61 + h,
    )
    return nv


def test_nvml_path_reports_every_gpu() -> None:
    nv = nvml_standin()
    gpus, reason = gpu_report(nv)
    assert reason is None
    assert gpus == [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "memory_used_bytes": 2**30,
            "memory_total_bytes": 80 * 2**30,
            "utilization_percent": 37,
            "temperature_celsius": 61,
        },
        {
            "index": 1,
            "name": "NVIDIA L4",
            "memory_used_bytes": 2 * 2**30,
            "memory_total_bytes": 80 * 2**30,
            "utilization_percent": 38,
            "temperature_celsius": 62,
        },
    ]
    assert nv.calls == ["init", "shutdown"]


def test_the_probe_has_the_driver_and_free_memory_for_doctor() -> None:
    found = probe_gpus(nvml_standin(count=1))
    assert found.driver == "560.35.03" and found.reason is None
    assert found.gpus == [Gpu(0, "NVIDIA H100 80GB HBM3", 80 * 2**30, 2**30, 78 * 2**30, 37, 61)]


def test_driver_missing_is_a_reason_not_an_exception() -> None:
    gpus, reason = gpu_report(nvml_standin(fail_init=True))
    assert gpus == [] and reason is not None and "Shared Library Not Found" in reason


def test_zero_gpus_is_a_clean_no_gpu() -> None:
    assert gpu_report(nvml_standin(count=0)) == ([], "NVML found no GPU")


def test_package_missing_is_a_clean_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail for real
    gpus, reason = gpu_report()
    assert gpus == [] and reason is not None and "nvidia-ml-py" in reason


def test_this_machine_answers_without_raising() -> None:
    # The real NVML of the machine running the tests: no GPU on CI (empty list and a reason),
    # GPUs with every field on a GPU host.
    gpus, reason = gpu_report()
    assert gpu_info() == gpus
    if gpus:
        assert reason is None and all(isinstance(g["memory_total_bytes"], int) for g in gpus)
    else:
        assert isinstance(reason, str) and reason


# --- the GPUs on /metrics ------------------------------------------------------------------


def test_gpus_are_gauges_on_the_metrics_page() -> None:
    from vllama.observability.gpu_metrics import GpuCollector
    from vllama.observability.metrics import Metrics

    text = Metrics(gpus=GpuCollector(lambda: probe_gpus(nvml_standin()))).render().decode()
    assert "vllama_gpus 2.0" in text
    assert 'vllama_gpu_info{driver="560.35.03",gpu="0",name="NVIDIA H100 80GB HBM3"} 1.0' in text
    assert 'vllama_gpu_memory_total_bytes{gpu="1"} 8.589934592e+10' in text  # 80 GiB
    assert 'vllama_gpu_memory_used_bytes{gpu="1"} 2.147483648e+09' in text  # 2 GiB
    assert 'vllama_gpu_utilization_ratio{gpu="0"} 0.37' in text
    assert 'vllama_gpu_temperature_celsius{gpu="1"} 62.0' in text


def test_no_gpu_is_one_zero_gauge_and_nothing_else() -> None:
    from vllama.observability.gpu_metrics import GpuCollector
    from vllama.observability.metrics import Metrics

    text = Metrics(gpus=GpuCollector(lambda: probe_gpus(nvml_standin(fail_init=True)))).render()
    lines = [ln for ln in text.decode().splitlines() if ln.startswith("vllama_gpu")]
    assert lines == ["vllama_gpus 0.0"]


def test_one_nvml_round_serves_scrapes_within_max_age() -> None:
    from vllama.observability.gpu_metrics import GpuCollector

    now = [0.0]
    probes: list[int] = []

    def probe() -> GpuProbe:
        probes.append(1)
        return probe_gpus(nvml_standin(count=1))

    collector = GpuCollector(probe, max_age_s=2.0, clock=lambda: now[0])
    for t in (0.0, 1.0, 1.9):
        now[0] = t
        list(collector.collect())
    assert len(probes) == 1
    now[0] = 2.0
    list(collector.collect())
    assert len(probes) == 2
