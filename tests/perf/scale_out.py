"""Does a second façade process help on this machine? At concurrency 64 against the instant
upstream, interleaved: Nginx alone (the floor), one façade, and two façades behind Nginx
(least connections), `/v1` and `/api`, plain and streamed. Prints requests/s, the ratio to
Nginx alone and the CPU ms per request of the proxy/façade processes; `--json FILE` keeps
them. Referenced by docs/performance-analysis.md.

    python -m tests.perf.scale_out [--rounds 4] [--seconds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.perf import procs
from tests.perf.run import level, level_with_cpu, machine

CONCURRENCY = 64


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path, help="write the figures here as well")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "concurrency": CONCURRENCY, "modes": {}}
    with ExitStack() as stack:
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
            rates: dict[str, list[float]] = {k: [] for k in targets}
            cpu_ms: dict[str, list[float]] = {k: [] for k in targets}
            for _ in range(args.rounds):
                for name in random.sample(list(targets), len(targets)):
                    entry, api, counted = targets[name]
                    r, ms = level_with_cpu(
                        counted, entry.url, api, stream, CONCURRENCY, args.seconds
                    )
                    rates[name].append(r["requests_per_s"])
                    cpu_ms[name].append(ms)
            floor = statistics.median(rates["nginx"])
            mode = "stream" if stream else "plain"
            results["modes"][mode] = rows = {
                name: {
                    "requests_per_s": round(statistics.median(rates[name])),
                    "vs_nginx": round(statistics.median(rates[name]) / floor, 3),
                    "cpu_ms_per_request": round(statistics.median(cpu_ms[name]), 3),
                }
                for name in targets
            }
            print(f"{mode}, c={CONCURRENCY}:")
            for name, row in rows.items():
                print(
                    f"  {name:<16} {row['requests_per_s']:>6} req/s  {row['vs_nginx']:>5}× Nginx"
                    f"  {row['cpu_ms_per_request']:>6} CPU ms/request",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
