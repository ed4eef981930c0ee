"""The one way every benchmark in tests/perf runs its arms, reads CPU and reports.

Running: `interleave` runs every arm (a target, a side of an A/B, a server) once per round,
in a fresh random order each round, so that the machine's drift (other processes, CPU
frequency, a noisy neighbour) falls on all arms alike.

CPU: `cpu_seconds(pid)` reads a process's CPU clock (all its threads, exited ones
included) in nanoseconds from the kernel, so short runs still resolve microseconds per
request; a benchmark measures CPU seconds per unit of work, which does not depend on how
much of the machine the process got. Always reported in µs per unit (`us_per`): per
request, or per streamed token.

Reporting: absolute figures are medians over rounds. A comparison between two arms is the
median of the per-round ratios (`paired_ratio`) or, for added latency, of the per-round
differences (`paired_diff`). Both arms of a round ran back to back under the same load,
so each round's ratio cancels what the round had in common; the median then drops the
rounds where one arm alone caught a burst. A ratio of medians would divide figures taken
in different rounds and keep the drift.

`LoadMonitor` samples the machine's load while a benchmark runs: reported next to the
figures, it says how much the machine was shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import psutil

from vllama.bench.load import LoadSpec, run_level

T = TypeVar("T")
MODEL = "vllama-demo"


def interleave(
    arms: Sequence[str],
    rounds: int,
    run: Callable[[str, int], T],
    *,
    rng: random.Random | None = None,
) -> dict[str, list[T]]:
    """`run(arm, round)` for every arm once per round, in a fresh random order each round.
    Returns each arm's results in round order."""
    pick = rng or random.Random()
    results: dict[str, list[T]] = {arm: [] for arm in arms}
    for r in range(rounds):
        for arm in pick.sample(list(arms), len(arms)):
            results[arm].append(run(arm, r))
    return results


def level(
    url: str,
    api: str,
    stream: bool,
    concurrency: int,
    duration: float,
    max_requests: int,
    api_key: str | None = None,
    max_tokens: int = 16,
) -> dict[str, Any]:
    """One closed-loop load (`vllama bench`'s generator) against `url`: `concurrency`
    workers until `duration` seconds or `max_requests` requests; its summary."""
    spec = LoadSpec(
        url=url,
        model=MODEL,
        api=api,  # type: ignore[arg-type]
        stream=stream,
        concurrency=concurrency,
        requests=max_requests,
        duration_s=duration,
        max_tokens=max_tokens,
        prompt_tokens=16,
        timeout_s=120,
        api_key=api_key,
    )
    return asyncio.run(run_level(spec))


def measure(
    run: Callable[[], dict[str, Any]], clocks: Mapping[str, Callable[[], float]]
) -> dict[str, Any]:
    """`run()`'s result plus `cpu_s`: the CPU seconds each clock advanced meanwhile."""
    before = {name: clock() for name, clock in clocks.items()}
    result = run()
    result["cpu_s"] = {name: clock() - before[name] for name, clock in clocks.items()}
    return result


def cpu_seconds(pid: int) -> float:
    """CPU time of process `pid` (every thread, exited ones too; children not included),
    from the kernel's per-process CPU clock: nanosecond resolution, where /proc's
    utime/stime count 10 ms ticks. OSError once the process is gone."""
    return time.clock_gettime(((~pid) << 3) | 2)  # CPUCLOCK_SCHED of the whole process


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and its live descendants (a façade with worker processes)."""
    total = 0.0
    try:
        pids = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return 0.0
    for p in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


def us_per(cpu_s: float, units: float) -> float | None:
    """CPU microseconds per unit of work (request, token); None without work."""
    return round(cpu_s / units * 1e6, 2) if units else None


def median(values: Iterable[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return round(statistics.median(clean), 4) if clean else None


def paired_ratio(a: Sequence[float | None], b: Sequence[float | None]) -> float | None:
    """Median over rounds of a[r] / b[r] (rounds where either is missing are skipped)."""
    return median(x / y for x, y in zip(a, b, strict=True) if x is not None and y)


def paired_diff(a: Sequence[float | None], b: Sequence[float | None]) -> float | None:
    """Median over rounds of a[r] - b[r]."""
    return median(x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None)


class LoadMonitor:
    """Samples the 1-minute load average and the machine's busy share every `every_s`
    seconds in a thread, while the `with` block runs."""

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self.loadavg: list[float] = []
        self.busy: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        psutil.cpu_percent(None)  # the first call only sets the reference point
        while not self._stop.wait(self.every_s):
            self.loadavg.append(os.getloadavg()[0])
            self.busy.append(psutil.cpu_percent(None) / 100)

    def __enter__(self) -> LoadMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        """Load average (min / median / max) and the median busy share of all CPUs."""
        if not self.loadavg:
            self.loadavg.append(os.getloadavg()[0])
        return {
            "cpus": psutil.cpu_count(),
            "loadavg_min": round(min(self.loadavg), 2),
            "loadavg_median": round(statistics.median(self.loadavg), 2),
            "loadavg_max": round(max(self.loadavg), 2),
            "busy_share_median": median(self.busy),
        }


def machine() -> dict[str, Any]:
    """What the figures were taken on."""
    return {
        "cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def describe_load(load: dict[str, Any]) -> str:
    """One line for reports: how shared the machine was during a run."""
    busy = load.get("busy_share_median")
    share = f", all CPUs busy {busy:.0%} of the time (median)" if busy is not None else ""
    return (
        f"load average {load['loadavg_min']}–{load['loadavg_max']} "
        f"(median {load['loadavg_median']}) on {load['cpus']} CPUs{share}"
    )
