"""Does a second façade process help on this machine? At concurrency 64 against the instant
upstream, interleaved: Nginx alone (the floor), one façade, and two façades behind Nginx
(least connections), `/v1` and `/api`, plain and streamed. Prints requests/s, the ratio to
Nginx alone (median of per-round ratios) and the CPU µs per request of the proxy/façade
processes (tests/perf/harness.py); `--json FILE` keeps
them. Referenced by docs/performance-analysis.md.

    python -m tests.perf.scale_out [--rounds 4] [--seconds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.perf import procs
from tests.perf.harness import (
    LoadMonitor,
    describe_load,
    interleave,
    level,
    machine,
    measure,
    median,
    paired_ratio,
    us_per,
)

CONCURRENCY = 64


def _runner(
    targets: dict[str, tuple[procs.Proc, str, list[procs.Proc]]], stream: bool, seconds: float
) -> Callable[[str, int], dict[str, Any]]:
    def run(name: str, _r: int) -> dict[str, Any]:
        entry, api, counted = targets[name]
        return measure(
            lambda: level(entry.url, api, stream, CONCURRENCY, seconds, 1_000_000, max_tokens=16),
            {"counted": lambda: sum(p.cpu_seconds() for p in counted)},
        )

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path, help="write the figures here as well")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "concurrency": CONCURRENCY, "modes": {}}
    with ExitStack() as stack, LoadMonitor() as load:
        up = stack.enter_context(procs.running(procs.instant_upstream(), "/health"))
        one = stack.enter_context(procs.running(procs.facade(up.url, "facade-a"), "/health/ready"))
        two = stack.enter_context(procs.running(procs.facade(up.url, "facade-b"), "/health/ready"))
        ngx = stack.enter_context(procs.running(procs.nginx(up.url), "/health"))
        pair = procs.nginx(one.url, two.url, name="nginx-2-facades")
        ngx2 = stack.enter_context(procs.running(pair, "/health"))
        # name: (entry point, API, processes whose CPU is counted)
        targets = {
            "nginx": (ngx, "openai", [ngx]),
            "1 façade /v1": (one, "openai", [one]),
            "2 façades /v1": (ngx2, "openai", [ngx2, one, two]),
            "1 façade /api": (one, "ollama", [one]),
            "2 façades /api": (ngx2, "ollama", [ngx2, one, two]),
        }
        for entry, api, _ in targets.values():
            level(entry.url, api, False, 4, 0.5, 200)
        for stream in (False, True):
            runs = interleave(list(targets), args.rounds, _runner(targets, stream, args.seconds))
            rates = {name: [r["requests_per_s"] for r in rs] for name, rs in runs.items()}
            mode = "stream" if stream else "plain"
            results["modes"][mode] = rows = {
                name: {
                    "requests_per_s": median(rates[name]),
                    "vs_nginx": paired_ratio(rates[name], rates["nginx"]),
                    "cpu_us_per_request": median(
                        us_per(r["cpu_s"]["counted"], r["ok"]) for r in runs[name]
                    ),
                    "failed": sum(r["errors"] for r in runs[name]),
                }
                for name in targets
            }
            print(f"{mode}, c={CONCURRENCY}:")
            for name, row in rows.items():
                print(
                    f"  {name:<16} {row['requests_per_s']:>8} req/s  {row['vs_nginx']:>6}× Nginx"
                    f"  {row['cpu_us_per_request']:>8} CPU µs/request  failed {row['failed']}",
                    flush=True,
                )
    results["load"] = load.summary()
    print(describe_load(results["load"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
