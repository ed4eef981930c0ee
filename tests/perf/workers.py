"""How the façade scales with worker processes (`workers`): 1, 2, 3 workers in front of the
instant upstream, interleaved in a fresh random order each round, at concurrency 64 over
fresh and kept-alive connections; `/v1` plain and `/api` streamed. Prints requests/s,
the ratio to one worker (median of per-round ratios) and the CPU µs per request of the
façade's processes (parent and workers), tests/perf/harness.py's way; `--json FILE` keeps
them. Referenced by docs/scale-out.md.

    python -m tests.perf.workers [--workers 1,2,3] [--rounds 4] [--seconds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

from tests.perf import procs
from tests.perf.harness import (
    LoadMonitor,
    interleave,
    level,
    machine,
    measure,
    median,
    paired_ratio,
    us_per,
)

CONCURRENCY = 64
MODES = {"/v1 plain": ("openai", False), "/api stream": ("ollama", True)}


def _runner(
    facades: dict[int, procs.Measured], api: str, stream: bool, seconds: float
) -> Callable[[str, int], dict[str, Any]]:
    def run(n: str, _r: int) -> dict[str, Any]:
        f = facades[int(n)]
        host0 = psutil.cpu_times()
        r = measure(
            lambda: level(f.url, api, stream, CONCURRENCY, seconds, 1_000_000),
            {"facade": f.cpu_seconds},
        )
        host1 = psutil.cpu_times()
        idle = (host1.idle - host0.idle) / max(sum(host1) - sum(host0), 1e-9)
        r["host_busy"] = 1 - idle
        return r

    return run


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
    with ExitStack() as stack, LoadMonitor() as load:
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
        names = [str(n) for n in counts]
        for mode, (api, stream) in MODES.items():
            runs = interleave(names, args.rounds, _runner(facades, api, stream, args.seconds))
            rates = {n: [r["requests_per_s"] for r in runs[n]] for n in names}
            rows = results["modes"][mode] = {
                f"{n} worker{'s' if n != '1' else ''}": {
                    "requests_per_s": median(rates[n]),
                    "vs_1_worker": paired_ratio(rates[n], rates[names[0]]),
                    "facade_cpu_us_per_request": median(
                        us_per(r["cpu_s"]["facade"], r["ok"]) for r in runs[n]
                    ),
                    "host_cpu_busy": median(r["host_busy"] for r in runs[n]),
                }
                for n in names
            }
            print(f"{mode}, c={CONCURRENCY}:")
            for name, row in rows.items():
                print(
                    f"  {name:<10} {row['requests_per_s']:>8} req/s  {row['vs_1_worker']:>6}x"
                    f"  {row['facade_cpu_us_per_request']:>8} façade CPU µs/request"
                    f"  host busy {row['host_cpu_busy']:.0%}",
                    flush=True,
                )
    results["load"] = load.summary()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
