"""Summaries of a load run: percentiles, rates and error counts, as plain dicts for JSON."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestResult:
    """One request as the client saw it. Times are time.perf_counter() seconds."""

    start: float
    end: float = 0.0
    first_token: float | None = None  # first chunk that carried output
    output_tokens: int = 0
    # Gaps between consecutive output chunks of a stream (seconds).
    gaps: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float], scale: float = 1000.0) -> dict[str, float | None]:
    """p50/p90/p99/mean/max of `values`, multiplied by `scale` (seconds -> ms by default)."""

    def scaled(v: float | None) -> float | None:
        return None if v is None else round(v * scale, 4)

    return {
        "p50": scaled(percentile(values, 50)),
        "p90": scaled(percentile(values, 90)),
        "p99": scaled(percentile(values, 99)),
        "mean": scaled(sum(values) / len(values)) if values else None,
        "max": scaled(max(values)) if values else None,
    }


def summarize(results: Sequence[RequestResult], wall_s: float) -> dict[str, Any]:
    """The figures `vllama bench` reports for one load level."""
    ok = [r for r in results if r.error is None]
    errors: dict[str, int] = {}
    for r in results:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    ttfts = [t for r in ok if (t := r.ttft) is not None]
    gaps = [g for r in ok for g in r.gaps]
    tokens = sum(r.output_tokens for r in ok)
    return {
        "requests": len(results),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(ok) / wall_s, 2) if wall_s > 0 else 0.0,
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / wall_s, 2) if wall_s > 0 else 0.0,
        "latency_ms": distribution([r.latency for r in ok]),
        "ttft_ms": distribution(ttfts),
        "itl_ms": distribution(gaps),
        "max_stall_ms": round(max(gaps) * 1000, 3) if gaps else None,
    }
