"""`make bench`: the side-by-side benchmark. Same load, same upstream, same run, targets
interleaved in a fresh random order every round so machine drift hits all alike; figures
are medians over rounds of per-round ratios against the baseline of that round.

Phases:
  overhead  an instant upstream (tests/perf/instant_upstream.py) reached directly, through
            Nginx (plain reverse proxy), the façade (/v1 pass-through and /api translation)
            and the LiteLLM proxy; concurrency 1, 16, 64, 256; streaming and not.
  e2e       a real vLLM engine (CPU build, the demo model) directly and through the façade;
            concurrency 1, 8, 32, 128; then 256 concurrent streams for stalls and errors.

Writes docs/performance-results.json and docs/performance.md (tests/perf/report.py).

    python -m tests.perf.run [--quick] [--phases overhead,e2e]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import time
from collections import defaultdict
from contextlib import ExitStack
from typing import Any

import psutil

from tests.engines import start_engine
from tests.perf import procs
from tests.perf.report import write_report
from tests.procs import REPO
from vllama.bench.load import LoadSpec, run_level

MODEL = "vllama-demo"
RESULTS = REPO / "docs" / "performance-results.json"


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
    spec = LoadSpec(
        url=url,
        model=MODEL,
        api=api,
        stream=stream,  # type: ignore[arg-type]
        concurrency=concurrency,
        requests=max_requests,
        duration_s=duration,
        max_tokens=max_tokens,
        prompt_tokens=16,
        timeout_s=120,
        api_key=api_key,
    )
    return asyncio.run(run_level(spec))


def median(values: list[float]) -> float | None:
    clean = [v for v in values if v is not None]
    return round(statistics.median(clean), 4) if clean else None


def run_interleaved(
    targets: dict[str, tuple[str, str, str | None]],
    concurrencies: list[int],
    rounds: int,
    duration: float,
    stream_modes: list[bool],
    facade: procs.Measured,
    max_tokens: int,
) -> dict[str, Any]:
    """Every (mode, concurrency): `rounds` rounds, each running every target once in random order."""
    out: dict[str, Any] = {}
    for stream in stream_modes:
        for c in concurrencies:
            runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in range(rounds):
                order = list(targets)
                random.shuffle(order)
                for name in order:
                    url, api, key = targets[name]
                    cpu0 = facade.cpu_seconds()
                    result = level(
                        url,
                        api,
                        stream,
                        c,
                        duration,
                        max_requests=100_000,
                        api_key=key,
                        max_tokens=max_tokens,
                    )
                    cpu = facade.cpu_seconds() - cpu0
                    if name.startswith("facade") and result["ok"]:
                        result["facade_cpu_s_per_1k_requests"] = round(cpu / result["ok"] * 1000, 3)
                    result["round"] = r
                    runs[name].append(result)
                    print(
                        f"  {'stream' if stream else 'plain '} c={c:<3} round {r} {name:<11} "
                        f"{result['requests_per_s']:>8} req/s  p50 {result['latency_ms']['p50']} ms"
                        f"  errors {result['errors']}",
                        flush=True,
                    )
            out[f"{'stream' if stream else 'plain'}/c{c}"] = aggregate(runs)
    return out


def aggregate(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per target, and medians of per-round ratios against the other targets."""
    base = runs.get("direct", [])
    agg: dict[str, Any] = {}
    for name, results in runs.items():
        row: dict[str, Any] = {
            "rounds": len(results),
            "requests_per_s": median([r["requests_per_s"] for r in results]),
            "output_tokens_per_s": median([r["output_tokens_per_s"] for r in results]),
            "latency_p50_ms": median([r["latency_ms"]["p50"] for r in results]),
            "latency_p99_ms": median([r["latency_ms"]["p99"] for r in results]),
            "ttft_p50_ms": median([r["ttft_ms"]["p50"] for r in results]),
            "itl_p50_ms": median([r["itl_ms"]["p50"] for r in results]),
            "itl_p99_ms": median([r["itl_ms"]["p99"] for r in results]),
            "errors": sum(r["errors"] for r in results),
            "client_cpu_share": median([r["client_cpu_share"] for r in results]),
        }
        if "facade_cpu_s_per_1k_requests" in results[0]:
            row["facade_cpu_s_per_1k_requests"] = median(
                [r.get("facade_cpu_s_per_1k_requests") for r in results]
            )
        if base and name != "direct":
            pairs = list(zip(results, base, strict=False))
            row["added_latency_p50_ms"] = median(
                [
                    r["latency_ms"]["p50"] - b["latency_ms"]["p50"]
                    for r, b in pairs
                    if r["latency_ms"]["p50"] is not None and b["latency_ms"]["p50"] is not None
                ]
            )
            row["added_latency_p99_ms"] = median(
                [
                    r["latency_ms"]["p99"] - b["latency_ms"]["p99"]
                    for r, b in pairs
                    if r["latency_ms"]["p99"] is not None and b["latency_ms"]["p99"] is not None
                ]
            )
            row["added_ttft_p50_ms"] = median(
                [
                    r["ttft_ms"]["p50"] - b["ttft_ms"]["p50"]
                    for r, b in pairs
                    if r["ttft_ms"]["p50"] is not None and b["ttft_ms"]["p50"] is not None
                ]
            )
            row["throughput_vs_direct"] = median(
                [r["requests_per_s"] / b["requests_per_s"] for r, b in pairs if b["requests_per_s"]]
            )
            row["tokens_vs_direct"] = median(
                [
                    r["output_tokens_per_s"] / b["output_tokens_per_s"]
                    for r, b in pairs
                    if b["output_tokens_per_s"]
                ]
            )
        agg[name] = row
    for name in agg:
        for other in ("nginx", "litellm"):
            if other in runs and name != other:
                pairs = list(zip(runs[name], runs[other], strict=False))
                agg[name][f"throughput_vs_{other}"] = median(
                    [
                        r["requests_per_s"] / o["requests_per_s"]
                        for r, o in pairs
                        if o["requests_per_s"]
                    ]
                )
    return agg


def overhead_phase(quick: bool) -> dict[str, Any]:
    concurrencies = [1, 16, 64] if quick else [1, 16, 64, 256]
    rounds = 2 if quick else 3
    duration = 2.0 if quick else 3.0
    with ExitStack() as stack:
        up = stack.enter_context(procs.running(procs.instant_upstream(), "/health"))
        fac = stack.enter_context(procs.running(procs.facade(up.url), "/health/ready"))
        ngx = stack.enter_context(procs.running(procs.nginx(up.url), "/health"))
        targets: dict[str, tuple[str, str, str | None]] = {
            "direct": (up.url, "openai", None),
            "nginx": (ngx.url, "openai", None),
            "facade_v1": (fac.url, "openai", None),
            "facade_api": (fac.url, "ollama", None),
        }
        lite = procs.litellm(up.url)
        if lite is not None:
            stack.enter_context(procs.running(lite, "/health/liveliness"))
            targets["litellm"] = (lite.url, "openai", procs.LITELLM_KEY)
        else:
            print("LiteLLM is not installed (.venv-bench): its column is left out")
        for url, api, key in targets.values():  # warm every target once
            level(url, api, True, 4, 0.5, 200, key)
        up0 = procs.upstream_stats(up.url)
        results = run_interleaved(
            targets, concurrencies, rounds, duration, [False, True], fac, max_tokens=16
        )
        up1 = procs.upstream_stats(up.url)
        served = up1["requests"] - up0["requests"]
        return {
            "levels": results,
            "concurrencies": concurrencies,
            "rounds": rounds,
            "seconds_per_run": duration,
            "upstream_cpu_us_per_request": round((up1["cpu_s"] - up0["cpu_s"]) / served * 1e6, 1),
            "facade_peak_rss_mb": fac.peak_rss_mb(),
            "client_ceiling_requests_per_s": max(
                v["direct"]["requests_per_s"] for v in results.values()
            ),
        }


def e2e_phase(quick: bool) -> dict[str, Any]:
    concurrencies = [1, 8, 32] if quick else [1, 8, 32, 128]
    rounds = 2
    duration = 6.0 if quick else 10.0
    engine = start_engine("chat")
    try:
        with procs.running(procs.facade(engine.url, name="facade-e2e"), "/health/ready") as fac:
            targets: dict[str, tuple[str, str, str | None]] = {
                "direct": (engine.url, "openai", None),
                "facade_v1": (fac.url, "openai", None),
                "facade_api": (fac.url, "ollama", None),
            }
            for url, api, _ in targets.values():
                level(url, api, True, 4, 1.0, 50, max_tokens=64)
            results = run_interleaved(
                targets, concurrencies, rounds, duration, [True], fac, max_tokens=64
            )
            stalls = {}
            for name in ("direct", "facade_api", "facade_v1"):
                url, api, _ = targets[name]
                r = level(url, api, True, 256, 120.0, 256, max_tokens=64)
                stalls[name] = {
                    k: r[k]
                    for k in ("requests", "ok", "errors", "error_kinds", "max_stall_ms", "wall_s")
                }
                print(
                    f"  256 streams {name}: errors {r['errors']} max stall {r['max_stall_ms']} ms"
                )
            return {
                "levels": results,
                "concurrencies": concurrencies,
                "rounds": rounds,
                "seconds_per_run": duration,
                "streams_256": stalls,
                "facade_peak_rss_mb": fac.peak_rss_mb(),
            }
    finally:
        engine.stop()


def machine() -> dict[str, Any]:
    return {
        "cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer levels and rounds")
    parser.add_argument("--phases", default="overhead,e2e")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if RESULTS.exists() and args.phases != "overhead,e2e":  # one phase again: keep the others
        results = json.loads(RESULTS.read_text())
    results.update(machine=machine(), quick=args.quick)
    started = time.monotonic()
    for phase in args.phases.split(","):
        print(f"== {phase}", flush=True)
        results[phase] = {"overhead": overhead_phase, "e2e": e2e_phase}[phase](args.quick)
    results["wall_s"] = round(time.monotonic() - started, 1)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, REPO / "docs" / "performance.md")
    print(f"wrote {RESULTS.relative_to(REPO)} and docs/performance.md")


if __name__ == "__main__":
    main()
