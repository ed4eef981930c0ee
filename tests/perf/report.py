"""docs/performance.md from the benchmark's results JSON: the targets of issue 16 side by
side with what was measured, then the tables they come from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.perf.harness import describe_load

_ORDER = ["direct", "nginx", "facade_v1", "facade_api", "litellm"]
# Façade CPU per streamed token ÷ vLLM's API server's, on the same requests (issue 16).
FRONTEND_LIMITS = {"facade_v1": 0.10, "facade_api": 0.15}
# Added latency at concurrency 1 against the instant upstream, ms.
P50_LIMITS = {"facade_v1": 0.5, "facade_api": 1.0}
P99_LIMIT = 3.0
RSS_LIMIT_MB = 150.0


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _rows(levels: dict[str, Any], columns: list[tuple[str, str]]) -> list[str]:
    lines = [
        "| load | target | " + " | ".join(h for h, _ in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for load, targets in levels.items():
        for name in sorted(targets, key=lambda n: _ORDER.index(n) if n in _ORDER else 99):
            row = targets[name]
            cells = " | ".join(fmt(row.get(k)) for _, k in columns)
            lines.append(f"| {load} | {name} | {cells} |")
    return lines


def failures(results: dict[str, Any]) -> tuple[int, int, dict[str, int]]:
    """(failed, requests, kinds) over every run of every phase."""
    failed = total = 0
    kinds: dict[str, int] = {}
    for phase in ("latency", "frontend"):
        for targets in results.get(phase, {}).get("levels", {}).values():
            for row in targets.values():
                failed += row["errors"]
                total += row["requests"]
                for k, v in row.get("error_kinds", {}).items():
                    kinds[k] = kinds.get(k, 0) + v
    for s in results.get("frontend", {}).get("streams_256", {}).values():
        failed += s["errors"]
        total += s["requests"]
        for k, v in s.get("error_kinds", {}).items():
            kinds[k] = kinds.get(k, 0) + v
    return failed, total, kinds


def evaluate(results: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, threshold, measured, met?) for each of issue 16's targets."""
    out: list[tuple[str, str, str, bool | None]] = []
    front = results.get("frontend", {}).get("levels", {})
    for load, targets in front.items():
        for name, limit in FRONTEND_LIMITS.items():
            row = targets.get(name, {})
            ratio = row.get("facade_vs_frontend_cpu")
            measured = (
                f"{fmt(ratio)} ({fmt(row.get('facade_cpu_us_per_token'))} vs "
                f"{fmt(row.get('frontend_cpu_us_per_token'))} µs/token)"
            )
            met = None if ratio is None else ratio <= limit
            out.append(
                (
                    f"façade ÷ vLLM frontend CPU per token, {load}, {name}",
                    f"≤ {limit}×",
                    measured,
                    met,
                )
            )
    c1 = results.get("latency", {}).get("levels", {}).get("plain/c1", {})
    for name, limit in P50_LIMITS.items():
        p50 = c1.get(name, {}).get("added_latency_p50_ms")
        p99 = c1.get(name, {}).get("added_latency_p99_ms")
        out.append(
            (
                f"added latency p50, c=1, {name}",
                f"≤ {limit} ms",
                fmt(p50),
                None if p50 is None else p50 <= limit,
            )
        )
        out.append(
            (
                f"added latency p99, c=1, {name}",
                f"≤ {P99_LIMIT} ms",
                fmt(p99),
                None if p99 is None else p99 <= P99_LIMIT,
            )
        )
    failed, total, kinds = failures(results)
    detail = f"{failed} of {total}" + (
        f" ({', '.join(f'{k}: {v}' for k, v in kinds.items())})" if kinds else ""
    )
    out.append(
        ("failed requests, every run of every phase", "0", detail, failed == 0 if total else None)
    )
    rss = results.get("frontend", {}).get("facade_peak_rss_mb")
    out.append(
        (
            "façade peak RSS per worker, 256 streams",
            f"≤ {RSS_LIMIT_MB:.0f} MB",
            fmt(rss),
            None if rss is None else rss <= RSS_LIMIT_MB,
        )
    )
    return out


def frontend_lines(results: dict[str, Any]) -> list[str]:
    """The frontend comparison (also printed by `make bench`)."""
    front = results.get("frontend")
    if not front:
        return []
    return _rows(
        front["levels"],
        [
            ("tok/s", "output_tokens_per_s"),
            ("× direct tok/s", "tokens_vs_direct"),
            ("façade µs/token", "facade_cpu_us_per_token"),
            ("vLLM frontend µs/token", "frontend_cpu_us_per_token"),
            ("façade ÷ frontend", "facade_vs_frontend_cpu"),
            ("TTFT p50 ms", "ttft_p50_ms"),
            ("ITL p50 ms", "itl_p50_ms"),
            ("ITL p99 ms", "itl_p99_ms"),
            ("requests", "requests"),
            ("failed", "errors"),
        ],
    )


def write_report(results: dict[str, Any], path: Path) -> None:
    m = results["machine"]
    quick = " (quick mode)" if results.get("quick") else ""
    lines = [
        "# Performance",
        "",
        "Generated by `make bench` (`tests/perf/run.py`) from `docs/performance-results.json`;",
        "do not edit by hand. Re-run to refresh.",
        "",
        f"Machine: {m['cpus']} CPUs, {m['memory_gb']} GiB, Python {m['python']}, {m['platform']};",
        f"run {m['date']}{quick}, {fmt(results.get('wall_s'))} s in all. No GPU: the engine is vLLM's CPU build.",
        "",
        "## Targets (issue 16)",
        "",
        "| target | threshold | measured | met |",
        "|---|---|---|---|",
    ]
    for name, limit, value, ok in evaluate(results):
        lines.append(
            f"| {name} | {limit} | {value} | {'–' if ok is None else ('yes' if ok else '**no**')} |"
        )
    lines += [
        "",
        "Where a target is missed, why and what it would take: docs/performance-analysis.md.",
        "",
        "## Method",
        "",
        "- Runs (tests/perf/harness.py): every target once per round, in a fresh random order each",
        "  round. Absolute figures are medians over rounds; comparisons are medians of per-round",
        "  ratios or differences (both sides of a round ran back to back under the same load).",
        "- CPU: each process's CPU clock from the kernel (all its threads, ns resolution), in µs",
        "  per request or per streamed token. vLLM's frontend is its API server process alone",
        "  (EngineCore is its child process and is not counted). Façade ÷ frontend is the CPU",
        "  both spent on the same requests (the façade's run), per round, median.",
        "- Load: `vllama bench`'s generator (aiohttp, closed loop: N workers). Client, proxies and",
        "  upstream share the machine; the client's CPU share is reported (near 1.0: it is the",
        "  limit). The façade runs as operators run it: `vllama serve --engine URL`, one worker,",
        "  JSON access log, metrics.",
        "",
    ]
    front = results.get("frontend")
    if front:
        lines += [
            "## The frontend comparison: a real vLLM engine (CPU build, demo model)",
            "",
            f"{front['stream_tokens']}-token streams; {front['rounds']} rounds × "
            f"{front['seconds_per_run']} s per target and level. During the phase: "
            f"{describe_load(front['load'])}. Frontend's child processes (not counted): "
            f"{', '.join(front.get('frontend_children', [])) or '–'}."
            + (
                f" The engine's extra flags: `{' '.join(front['engine_args'])}`."
                if front.get("engine_args")
                else ""
            ),
            "",
            *frontend_lines(results),
            "",
            "256 concurrent streams (64 tokens each), once per target:",
            "",
            "| target | ok | failed | max stall ms | wall s |",
            "|---|---|---|---|---|",
        ]
        for name, s in front.get("streams_256", {}).items():
            lines.append(
                f"| {name} | {s['ok']} | {s['errors']} | {fmt(s['max_stall_ms'])} | {s['wall_s']} |"
            )
        lines += [
            "",
            f"Façade peak RSS in this phase (largest process): {front['facade_peak_rss_mb']} MB.",
            "",
        ]
    lat = results.get("latency")
    if lat:
        lines += [
            "## Against the instant upstream: added latency and CPU",
            "",
            "Upstream: `tests/perf/instant_upstream.py` (raw asyncio + httptools, prebuilt answers",
            f"shaped like vLLM 0.32's, {lat['stream_tokens']} events per stream written at once, with",
            "the per-request timings of `--enable-per-request-metrics`, as engines vllama starts).",
            f"{lat['rounds']} rounds × {lat['seconds_per_run']} s per target and level.",
            f"During the phase: {describe_load(lat['load'])}.",
            "",
            *_rows(
                lat["levels"],
                [
                    ("req/s", "requests_per_s"),
                    ("p50 ms", "latency_p50_ms"),
                    ("p99 ms", "latency_p99_ms"),
                    ("added p50 ms", "added_latency_p50_ms"),
                    ("added p99 ms", "added_latency_p99_ms"),
                    ("× nginx req/s", "throughput_vs_nginx"),
                    ("× litellm req/s", "throughput_vs_litellm"),
                    ("façade µs/request", "facade_cpu_us_per_request"),
                    ("façade µs/token", "facade_cpu_us_per_token"),
                    ("failed", "errors"),
                    ("client cpu", "client_cpu_share"),
                ],
            ),
            "",
            f"Façade peak RSS in this phase: {lat['facade_peak_rss_mb']} MB.",
            "",
        ]
    path.write_text("\n".join(lines))
