"""An engine's live load from its own /metrics: running and waiting requests and KV-cache
usage (vLLM V1's `vllm:num_requests_running`, `vllm:num_requests_waiting`,
`vllm:kv_cache_usage_perc`). Polled by the pool's health loop, only for engines that
are one of several replicas of a model (upstream/balancer.py uses it).

vLLM 0.32 answers /metrics whole (about 60 kB; it ignores `name[]` filters), so the text
is scanned once with one regular expression for the three series rather than parsed.
A data-parallel engine reports one series per engine index: requests add up, the KV-cache
usage is the fullest one's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import aiohttp

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
_SAMPLE = re.compile(
    r"^(vllm:num_requests_running|vllm:num_requests_waiting|vllm:kv_cache_usage_perc)"
    r"(?:\{[^}\n]*\})? ([0-9.eE+-]+|NaN)",
    re.MULTILINE,
)


@dataclass(frozen=True)
class LoadSample:
    running: float
    waiting: float
    kv_usage: float


def parse_load(text: str) -> LoadSample | None:
    """The three figures from Prometheus text, or None when the engine reports none of
    them (not vLLM, or started with metrics off)."""
    running = waiting = kv = 0.0
    seen = False
    for name, raw in _SAMPLE.findall(text):
        try:
            value = float(raw)
        except ValueError:
            continue
        if value != value:  # NaN
            continue
        seen = True
        if name == RUNNING:
            running += value
        elif name == WAITING:
            waiting += value
        else:
            kv = max(kv, value)
    return LoadSample(running, waiting, min(max(kv, 0.0), 1.0)) if seen else None


async def fetch_load(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    timeout: aiohttp.ClientTimeout,
) -> LoadSample | None:
    """GET {url}/metrics and parse it; None when it fails or says nothing about load."""
    try:
        async with session.get(f"{url}/metrics", headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                return None
            text = await resp.text(errors="replace")
    except (aiohttp.ClientError, TimeoutError):
        return None
    return parse_load(text)


# How fast a peak of load is forgotten (seconds, e-folding). An engine's running count is
# noisy between polls: requests that started together end in one step and the next ones
# are still in vLLM's API server (tokenising, queued behind a busy CPU), so one poll can
# read 0 from an engine that is busy a moment before and after. Peak-EWMA (as Finagle's
# and Linkerd's balancers use for latency): a higher sample counts at once, a lower one
# only as the old peak decays.
PEAK_DECAY_S = 2.0


def smoothed(new: LoadSample, old: LoadSample | None, seconds_since: float) -> LoadSample:
    """`new`, or the decayed `old` peak where that is higher (figure by figure)."""
    if old is None:
        return new
    keep = math.exp(-max(seconds_since, 0.0) / PEAK_DECAY_S)
    return LoadSample(
        max(new.running, old.running * keep),
        max(new.waiting, old.waiting * keep),
        max(new.kv_usage, old.kv_usage * keep),
    )
