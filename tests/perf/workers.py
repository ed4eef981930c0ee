"""How the façade scales with worker processes (`workers`): 1, 2, 3 workers in front of the
instant upstream, interleaved in a fresh random order each round, at concurrency 64 over
fresh and kept-alive connections; `/v1` plain and `/api` streamed. Prints requests/s,
the ratio to one worker, and the CPU ms per request of the façade's processes (parent and
workers); `--json FILE` keeps them. Referenced by docs/scale-out.md.

    python -m tests.perf.workers [--workers 1,2,3] [--rounds 4] [--seconds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

from tests.perf import procs
from tests.perf.run import level, level_with_cpu, machine

CONCURRENCY = 64
MODES = {"/v1 plain": ("openai", False), "/api stream": ("ollama", True)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path, help="write the figures here as well")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    results: dict[str, Any] = {
        "machine": machine(),
        "concurrency": CONCURRENCY,
        "seconds_per_run": args.seconds,
        "rounds": args.rounds,
        "modes": {},
    }
    with ExitStack() as stack:
        up = stack.enter_context(procs.running(procs.instant_upstream(), "/health"))
        facades = {
            n: stack.enter_context(
                procs.running(
                    procs.facade(up.url, f"facade-{n}w", extra_env={"VLLAMA_WORKERS": str(n)}),
                    "/health/ready",
                )
            )
            for n in counts
        }
        for f in facades.values():  # warm every worker up
            for api, stream in MODES.values():
                level(f.url, api, stream, 8, 0.5, 400)
        for mode, (api, stream) in MODES.items():
            rates: dict[int, list[float]] = {n: [] for n in counts}
            cpu_ms: dict[int, list[float]] = {n: [] for n in counts}
            busy: dict[int, list[float]] = {n: [] for n in counts}
            for _ in range(args.rounds):
                for n in random.sample(counts, len(counts)):
                    f = facades[n]
                    host0 = psutil.cpu_times()
                    r, ms = level_with_cpu([f], f.url, api, stream, CONCURRENCY, args.seconds)
                    host1 = psutil.cpu_times()
                    rates[n].append(r["requests_per_s"])
                    cpu_ms[n].append(ms)
                    idle = (host1.idle - host0.idle) / max(sum(host1) - sum(host0), 1e-9)
                    busy[n].append(1 - idle)
            base = statistics.median(rates[counts[0]])
            rows = results["modes"][mode] = {
                f"{n} worker{'s' if n > 1 else ''}": {
                    "requests_per_s": round(statistics.median(rates[n])),
                    "vs_1_worker": round(statistics.median(rates[n]) / base, 3),
                    "facade_cpu_ms_per_request": round(statistics.median(cpu_ms[n]), 3),
                    "host_cpu_busy": round(statistics.median(busy[n]), 3),
                }
                for n in counts
            }
            print(f"{mode}, c={CONCURRENCY}:")
            for name, row in rows.items():
                print(
                    f"  {name:<10} {row['requests_per_s']:>6} req/s  {row['vs_1_worker']:>5}x"
                    f"  {row['facade_cpu_ms_per_request']:>6} façade CPU ms/request"
                    f"  host busy {row['host_cpu_busy']:.0%}",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
