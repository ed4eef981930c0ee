"""A/B: the façade of another commit against the working tree's, in one interleaved run.

Checks REF out into a git worktree under .cache/, starts both façades (`vllama serve`, the
old one with REF's `app/` first on PYTHONPATH) in front of the same instant upstreams
(64-token streams shaped like vLLM's: one written at once, as a busy engine's events
arrive together, and one paced 2 ms apart, one event per read) and loads old and new in
a fresh random order each round (tests/perf/harness.py). Prints, per load, the medians
of the façade's CPU per request and per streamed token, and new ÷ old as the median of
the per-round ratios.

    python -m tests.perf.ab REF [--rounds 6] [--seconds 2.5] [--loads NAME,...] [--json FILE]
    python -m tests.perf.ab REF --engine    # the same, through a real vLLM engine
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.engines import start_engine
from tests.perf import procs
from tests.perf.harness import (
    LoadMonitor,
    describe_load,
    interleave,
    level,
    measure,
    median,
    paired_ratio,
    us_per,
)
from tests.procs import REPO

TOKENS = 64
# name: (API, streamed, concurrency, upstream)
LOADS: dict[str, tuple[str, bool, int, str]] = {
    "/v1 plain c=1": ("openai", False, 1, "burst"),
    "/api plain c=1": ("ollama", False, 1, "burst"),
    "/v1 stream c=1": ("openai", True, 1, "burst"),
    "/api stream c=1": ("ollama", True, 1, "burst"),
    "/v1 stream c=32": ("openai", True, 32, "burst"),
    "/api stream c=32": ("ollama", True, 32, "burst"),
    "/v1 stream paced c=16": ("openai", True, 16, "paced"),
    "/api stream paced c=16": ("ollama", True, 16, "paced"),
    # --engine: a real vLLM engine (CPU build, the demo model) behind both façades
    "/v1 stream c=1 (vLLM)": ("openai", True, 1, "engine"),
    "/api stream c=1 (vLLM)": ("ollama", True, 1, "engine"),
    "/v1 stream c=32 (vLLM)": ("openai", True, 32, "engine"),
    "/api stream c=32 (vLLM)": ("ollama", True, 32, "engine"),
}
INSTANT = [name for name, load in LOADS.items() if load[3] != "engine"]
ENGINE = [name for name, load in LOADS.items() if load[3] == "engine"]


def _runner(
    sides: dict[str, procs.Proc], api: str, stream: bool, concurrency: int, seconds: float
) -> Callable[[str, int], dict[str, Any]]:
    def run(side: str, _r: int) -> dict[str, Any]:
        fac = sides[side]
        return measure(
            lambda: level(fac.url, api, stream, concurrency, seconds, 1_000_000, max_tokens=TOKENS),
            {"facade": fac.cpu_seconds},
        )

    return run


def compare(
    facades: dict[str, dict[str, procs.Proc]],
    loads: list[str],
    rounds: int,
    seconds: float,
    sides: tuple[str, str] = ("old", "new"),
) -> dict[str, Any]:
    """Each load: both sides interleaved; CPU per unit of work, medians, new ÷ old as the
    median of per-round ratios (tests/perf/harness.py)."""
    old, new = sides
    out: dict[str, Any] = {}
    for name in loads:
        api, stream, concurrency, upstream = LOADS[name]
        run = _runner(facades[upstream], api, stream, concurrency, seconds)
        runs = interleave([old, new], rounds, run)
        unit = "output_tokens" if stream else "ok"
        per = {s: [us_per(r["cpu_s"]["facade"], r[unit]) for r in runs[s]] for s in runs}
        rate = {s: [r["requests_per_s"] for r in runs[s]] for s in runs}
        p50 = {s: [r["latency_ms"]["p50"] for r in runs[s]] for s in runs}
        out[name] = row = {
            "unit": "token" if stream else "request",
            "old_cpu_us": median(per[old]),
            "new_cpu_us": median(per[new]),
            "cpu_new_vs_old": paired_ratio(per[new], per[old]),
            "old_p50_ms": median(p50[old]),
            "new_p50_ms": median(p50[new]),
            "rate_new_vs_old": paired_ratio(rate[new], rate[old]),
            "failed": sum(r["errors"] for s in runs for r in runs[s]),
        }
        print(
            f"{name:<24} CPU µs/{row['unit']:<7} {row['old_cpu_us']:>8} → {row['new_cpu_us']:>8}"
            f" (×{row['cpu_new_vs_old']})  p50 ms {row['old_p50_ms']} → {row['new_p50_ms']}"
            f"  req/s ×{row['rate_new_vs_old']}  failed {row['failed']}",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ref", help="the commit to compare against (old)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.5)
    parser.add_argument("--loads", help="comma-separated load names (default: all but vLLM's)")
    parser.add_argument(
        "--engine",
        action="store_true",
        help="the loads through a real vLLM engine this starts (8 s per run)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here as well")
    args = parser.parse_args()
    default = ENGINE if args.engine else INSTANT
    loads = [name.strip() for name in args.loads.split(",")] if args.loads else default
    if args.engine and args.seconds < 8:
        args.seconds = 8.0  # a real engine's streams take seconds: enough of them per run
    uses = {LOADS[name][3] for name in loads}
    tree = REPO / ".cache" / "ab-old"
    git = ["git", "-C", str(REPO)]
    subprocess.run([*git, "worktree", "remove", "--force", str(tree)], capture_output=True)
    subprocess.run([*git, "worktree", "add", "--detach", "-f", str(tree), args.ref], check=True)
    try:
        with ExitStack() as stack:
            facades: dict[str, dict[str, procs.Proc]] = {}
            for upstream in sorted(uses):
                if upstream == "engine":
                    engine = start_engine("chat")
                    stack.callback(engine.stop)
                    url = engine.url
                else:
                    interval = 2.0 if upstream == "paced" else 0.0
                    up = stack.enter_context(
                        procs.running(
                            procs.instant_upstream(chunks=TOKENS, interval_ms=interval),
                            "/health",
                        )
                    )
                    url = up.url
                old = procs.facade(url, f"facade-old-{upstream}", tree / "app")
                new = procs.facade(url, f"facade-new-{upstream}")
                facades[upstream] = {
                    "old": stack.enter_context(procs.running(old, "/health/ready")),
                    "new": stack.enter_context(procs.running(new, "/health/ready")),
                }
                for fac in facades[upstream].values():
                    for api in ("openai", "ollama"):
                        level(fac.url, api, True, 4, 0.5, 100, max_tokens=TOKENS)
            print(f"old = {args.ref}, new = working tree; {args.rounds} rounds, interleaved")
            with LoadMonitor() as load:
                figures = compare(facades, loads, args.rounds, args.seconds)
            print(describe_load(load.summary()))
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(tree)], capture_output=True)
    if args.json:
        doc = {"ref": args.ref, "rounds": args.rounds, "load": load.summary(), "loads": figures}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
