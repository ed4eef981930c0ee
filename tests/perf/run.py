"""`make bench`: the side-by-side benchmark, in one run, for issue 16's targets.

Phases (tests/perf/harness.py runs and reports them all the same way):

  latency   the instant upstream (tests/perf/instant_upstream.py) reached directly, through
            Nginx (a plain reverse proxy), the façade (/v1 pass-through, /api translation)
            and the LiteLLM proxy when installed: added latency at concurrency 1, and
            requests/s and the façade's CPU per request and per streamed token at 64.
  frontend  a real vLLM engine (CPU build, the demo model) directly and through the
            façade, 64-token streams at concurrency 1, 32, 128: the façade's CPU per
            streamed token against vLLM's own API server process on the same requests
            (that process alone: EngineCore is its child and is not counted); then 256
            concurrent streams through each target (errors, stalls, the façade's peak RSS).

Every run of every phase counts its failed requests: the target is none.
Writes docs/performance-results.json and docs/performance.md (tests/perf/report.py).

    python -m tests.perf.run [--quick] [--phases latency,frontend]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

from tests.engines import start_engine
from tests.perf import harness, procs
from tests.perf.harness import (
    LoadMonitor,
    interleave,
    level,
    machine,
    measure,
    median,
    paired_diff,
)
from tests.perf.report import evaluate, frontend_lines, write_report
from tests.procs import REPO

RESULTS = REPO / "docs" / "performance-results.json"
REPORT = REPO / "docs" / "performance.md"
FACADE_APP: Path | None = None  # --facade-app: another checkout's façade
ENGINE_ARGS: list[str] = []  # --engine-arg: more flags for the frontend phase's engine
STREAM_TOKENS = 64  # tokens per streamed answer, both phases


def _target_runner(
    targets: dict[str, tuple[str, str, str | None]],
    clocks: dict[str, Callable[[], float]],
    stream: bool,
    concurrency: int,
    seconds: float,
    label: str,
) -> Callable[[str, int], dict[str, Any]]:
    def run(name: str, r: int) -> dict[str, Any]:
        url, api, key = targets[name]
        counted = (
            clocks
            if name.startswith("facade")
            else {k: v for k, v in clocks.items() if not k.startswith("facade")}
        )
        result = measure(
            lambda: level(
                url, api, stream, concurrency, seconds, 1_000_000, key, max_tokens=STREAM_TOKENS
            ),
            counted,
        )
        print(
            f"  {label} round {r} {name:<11} {result['requests_per_s']:>8} req/s"
            f"  p50 {result['latency_ms']['p50']} ms  tokens {result['output_tokens']}"
            f"  errors {result['errors']}",
            flush=True,
        )
        return result

    return run


def _summary(runs: list[dict[str, Any]], base: list[dict[str, Any]] | None) -> dict[str, Any]:
    """One target at one load: medians over rounds, paired figures against `base`."""

    def each(key: str, sub: str | None = None) -> list[Any]:
        return [r[key] if sub is None else r[key][sub] for r in runs]

    row: dict[str, Any] = {
        "rounds": len(runs),
        "requests_per_s": median(each("requests_per_s")),
        "output_tokens_per_s": median(each("output_tokens_per_s")),
        "latency_p50_ms": median(each("latency_ms", "p50")),
        "latency_p99_ms": median(each("latency_ms", "p99")),
        "ttft_p50_ms": median(each("ttft_ms", "p50")),
        "itl_p50_ms": median(each("itl_ms", "p50")),
        "itl_p99_ms": median(each("itl_ms", "p99")),
        "requests": sum(each("requests")),
        "errors": sum(each("errors")),
        "error_kinds": _merge_counts(each("error_kinds")),
        "client_cpu_share": median(each("client_cpu_share")),
    }
    for proc in runs[0]["cpu_s"]:
        cpu = [r["cpu_s"][proc] for r in runs]
        row[f"{proc}_cpu_us_per_request"] = median(
            harness.us_per(c, r["ok"]) for c, r in zip(cpu, runs, strict=True)
        )
        row[f"{proc}_cpu_us_per_token"] = median(
            harness.us_per(c, r["output_tokens"]) for c, r in zip(cpu, runs, strict=True)
        )
    if base is not None:
        row["added_latency_p50_ms"] = paired_diff(
            each("latency_ms", "p50"), [b["latency_ms"]["p50"] for b in base]
        )
        row["added_latency_p99_ms"] = paired_diff(
            each("latency_ms", "p99"), [b["latency_ms"]["p99"] for b in base]
        )
        row["added_ttft_p50_ms"] = paired_diff(
            each("ttft_ms", "p50"), [b["ttft_ms"]["p50"] for b in base]
        )
        row["tokens_vs_direct"] = harness.paired_ratio(
            each("output_tokens_per_s"), [b["output_tokens_per_s"] for b in base]
        )
    return row


def _merge_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


def _level_table(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    base = results.get("direct")
    table = {
        name: _summary(runs, base if name != "direct" else None) for name, runs in results.items()
    }
    for name, runs in results.items():
        for other in ("nginx", "litellm"):
            if other in results and name != other:
                table[name][f"throughput_vs_{other}"] = harness.paired_ratio(
                    [r["requests_per_s"] for r in runs],
                    [o["requests_per_s"] for o in results[other]],
                )
    return table


def latency_phase(quick: bool) -> dict[str, Any]:
    loads = [(False, 1), (True, 1), (False, 64), (True, 64)]
    rounds = 3 if quick else 5
    seconds = 2.0 if quick else 2.5
    with ExitStack() as stack:
        # Its answers carry vLLM's per-request timings, as engines vllama starts do
        # (--enable-per-request-metrics): /api stream:false is then answered whole.
        upstream = procs.instant_upstream(chunks=STREAM_TOKENS, request_metrics_ms=0.05)
        up = stack.enter_context(procs.running(upstream, "/health"))
        fac = stack.enter_context(
            procs.running(procs.facade(up.url, app_dir=FACADE_APP), "/health/ready")
        )
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
            level(url, api, True, 4, 0.5, 200, key, max_tokens=STREAM_TOKENS)
        clocks = {"facade": fac.cpu_seconds, "upstream": up.cpu_seconds}
        levels: dict[str, Any] = {}
        with LoadMonitor() as load:
            for stream, c in loads:
                label = f"{'stream' if stream else 'plain'}/c{c}"
                run = _target_runner(targets, clocks, stream, c, seconds, label)
                levels[label] = _level_table(interleave(list(targets), rounds, run))
        return {
            "levels": levels,
            "rounds": rounds,
            "seconds_per_run": seconds,
            "stream_tokens": STREAM_TOKENS,
            "load": load.summary(),
            "facade_peak_rss_mb": fac.peak_rss_mb(),
        }


def frontend_phase(quick: bool) -> dict[str, Any]:
    concurrencies = [1, 32] if quick else [1, 32, 128]
    rounds = 2 if quick else 3
    seconds = 5.0 if quick else 8.0
    engine = start_engine("chat", extra_args=ENGINE_ARGS)
    try:
        assert engine.proc is not None
        frontend = psutil.Process(engine.proc.pid)  # vLLM's API server: the HTTP frontend
        if not any("api_server" in part for part in frontend.cmdline()):
            raise RuntimeError(f"{frontend.cmdline()} is not vLLM's API server process")
        children = [c.name() for c in frontend.children(recursive=True)]
        with procs.running(
            procs.facade(engine.url, name="facade-e2e", app_dir=FACADE_APP), "/health/ready"
        ) as fac:
            targets: dict[str, tuple[str, str, str | None]] = {
                "direct": (engine.url, "openai", None),
                "facade_v1": (fac.url, "openai", None),
                "facade_api": (fac.url, "ollama", None),
            }
            for url, api, _ in targets.values():
                level(url, api, True, 4, 1.0, 40, max_tokens=STREAM_TOKENS)
            clocks = {
                "facade": fac.cpu_seconds,
                "frontend": lambda: harness.cpu_seconds(frontend.pid),
            }
            levels: dict[str, Any] = {}
            with LoadMonitor() as load:
                for c in concurrencies:
                    label = f"stream/c{c}"
                    run = _target_runner(targets, clocks, True, c, seconds, label)
                    results = interleave(list(targets), rounds, run)
                    table = _level_table(results)
                    for name in ("facade_v1", "facade_api"):
                        table[name]["facade_vs_frontend_cpu"] = harness.median(
                            r["cpu_s"]["facade"] / r["cpu_s"]["frontend"]
                            for r in results[name]
                            if r["cpu_s"]["frontend"]
                        )
                    levels[label] = table
                streams = streams_256(targets)
            return {
                "levels": levels,
                "rounds": rounds,
                "seconds_per_run": seconds,
                "stream_tokens": STREAM_TOKENS,
                "engine_args": ENGINE_ARGS,
                "frontend_children": children,
                "streams_256": streams,
                "load": load.summary(),
                "facade_peak_rss_mb": fac.peak_rss_mb(),
                "facade_peak_rss_mb_per_process": fac.peak_rss_mb_per_process(),
            }
    finally:
        engine.stop()


def streams_256(targets: dict[str, tuple[str, str, str | None]]) -> dict[str, Any]:
    """256 concurrent streams through each target once, in a random order."""

    def run(name: str, _r: int) -> dict[str, Any]:
        url, api, _ = targets[name]
        r = level(url, api, True, 256, 120.0, 256, max_tokens=STREAM_TOKENS)
        print(f"  256 streams {name}: errors {r['errors']} max stall {r['max_stall_ms']} ms")
        keep = ("requests", "ok", "errors", "error_kinds", "max_stall_ms", "wall_s")
        return {k: r[k] for k in keep}

    return {name: runs[0] for name, runs in interleave(list(targets), 1, run).items()}


PHASES = {"latency": latency_phase, "frontend": frontend_phase}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer levels and rounds")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument(
        "--facade-app",
        type=Path,
        help="run the façade from this checkout's app/ (figures of another commit)",
    )
    parser.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        help="one more vLLM flag or value for the frontend phase's engine (repeat it), "
        "e.g. --engine-arg=--stream-interval --engine-arg=8",
    )
    parser.add_argument("--json", type=Path, default=RESULTS, help="results file")
    parser.add_argument("--report", type=Path, default=REPORT, help="report file")
    args = parser.parse_args()
    global FACADE_APP
    FACADE_APP = args.facade_app
    ENGINE_ARGS[:] = args.engine_arg
    phases = args.phases.split(",")
    results: dict[str, Any] = {}
    if args.json.exists() and set(phases) != set(PHASES):  # one phase again: keep the others
        results = json.loads(args.json.read_text())
    results.update(machine=machine(), quick=args.quick)
    started = time.monotonic()
    for phase in phases:
        print(f"== {phase}", flush=True)
        t0 = time.monotonic()
        results[phase] = PHASES[phase](args.quick)
        results[phase]["wall_s"] = round(time.monotonic() - t0, 1)
    results["wall_s"] = round(time.monotonic() - started, 1)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.report)
    print("\nThe frontend comparison (façade vs vLLM's API server, CPU per streamed token):")
    print("\n".join(frontend_lines(results)))
    print("\nTargets (issue 16):")
    for name, limit, value, ok in evaluate(results):
        print(f"  {'–  ' if ok is None else ('yes' if ok else 'NO ')} {name}: {value} ({limit})")
    print(f"wrote {args.json} and {args.report} in {results['wall_s']} s")


if __name__ == "__main__":
    main()
