"""The GPUs on the façade's /metrics, read through NVML at scrape time (observability.gpu).

DCGM's exporter is the full GPU telemetry (monitoring/dcgm/); these few gauges are what the
façade itself can say without it, so a host with the driver but no exporter (a workstation,
`make gpu-check`) still shows its GPUs. Without NVML or a GPU only `vllama_gpus 0` is
exported. A probe is reused for `max_age_s`: Prometheus and a dashboard scraping at once
cost one NVML round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vllama.observability.gpu import GpuProbe, probe_gpus


class GpuCollector(Collector):
    def __init__(
        self,
        probe: Callable[[], GpuProbe] = probe_gpus,
        *,
        max_age_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, GpuProbe] | None = None

    def _current(self) -> GpuProbe:
        with self._lock:
            now = self._clock()
            if self._last is None or now - self._last[0] >= self._max_age_s:
                self._last = (now, self._probe())
            return self._last[1]

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no probe at registration: NVML is read when scraped

    def collect(self) -> Iterator[Metric]:
        found = self._current()
        count = GaugeMetricFamily("vllama_gpus", "NVIDIA GPUs NVML sees on this host.")
        count.add_metric([], len(found.gpus))
        yield count
        if not found.gpus:
            return
        labels = ["gpu"]
        info = GaugeMetricFamily(
            "vllama_gpu_info",
            "Each GPU's name and driver (value 1).",
            labels=["gpu", "name", "driver"],
        )
        total = GaugeMetricFamily(
            "vllama_gpu_memory_total_bytes", "GPU memory in all.", labels=labels
        )
        used = GaugeMetricFamily(
            "vllama_gpu_memory_used_bytes", "GPU memory in use (every process).", labels=labels
        )
        util = GaugeMetricFamily(
            "vllama_gpu_utilization_ratio",
            "Share of the last sample period a kernel ran on the GPU (NVML), 0 to 1.",
            labels=labels,
        )
        temp = GaugeMetricFamily(
            "vllama_gpu_temperature_celsius", "GPU core temperature.", labels=labels
        )
        for gpu in found.gpus:
            index = str(gpu.index)
            info.add_metric([index, gpu.name, found.driver or ""], 1)
            total.add_metric([index], gpu.memory_total)
            used.add_metric([index], gpu.memory_used)
            util.add_metric([index], gpu.utilization_percent / 100)
            temp.add_metric([index], gpu.temperature_celsius)
        yield from (info, total, used, util, temp)
