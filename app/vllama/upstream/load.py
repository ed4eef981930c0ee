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
