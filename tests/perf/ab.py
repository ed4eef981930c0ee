"""A/B: the façade of another commit against the working tree's, in one interleaved run.

Checks REF out into a git worktree under .cache/, starts both façades (`vllama serve`, the
old one with the worktree's `app/` first on PYTHONPATH) in front of one instant upstream,
and loads them in a fresh random order each round. Prints, per load, the medians of
requests/s and of the façade's CPU per request, and new ÷ old.

    python -m tests.perf.ab REF [--rounds 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
from contextlib import ExitStack

from tests.perf import procs
from tests.perf.run import level
from tests.procs import REPO

LOADS = (  # (API, streamed, concurrency)
    ("openai", False, 1),
    ("ollama", False, 1),
    ("openai", False, 64),
    ("ollama", False, 64),
    ("openai", True, 16),
    ("ollama", True, 16),
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ref", help="the commit to compare against (old)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    tree = REPO / ".cache" / "ab-old"
    git = ["git", "-C", str(REPO)]
    subprocess.run([*git, "worktree", "remove", "--force", str(tree)], capture_output=True)
    subprocess.run([*git, "worktree", "add", "--detach", "-f", str(tree), args.ref], check=True)
    try:
        with ExitStack() as stack:
            up = stack.enter_context(procs.running(procs.instant_upstream(), "/health"))
            facades = {
                "old": stack.enter_context(
                    procs.running(procs.facade(up.url, "facade-old", tree / "app"), "/health/ready")
                ),
                "new": stack.enter_context(
                    procs.running(procs.facade(up.url, "facade-new"), "/health/ready")
                ),
            }
            for fac in facades.values():
                for api in ("openai", "ollama"):
                    level(fac.url, api, True, 4, 0.5, 200)
            print(f"old = {args.ref}, new = working tree; medians of {args.rounds} rounds")
            for api, stream, concurrency in LOADS:
                rate: dict[str, list[float]] = {"old": [], "new": []}
                cpu_us: dict[str, list[float]] = {"old": [], "new": []}
                for _ in range(args.rounds):
                    for side in random.sample(["old", "new"], 2):
                        fac = facades[side]
                        before = fac.cpu_seconds()
                        r = level(fac.url, api, stream, concurrency, args.seconds, 1_000_000)
                        rate[side].append(r["requests_per_s"])
                        cpu_us[side].append((fac.cpu_seconds() - before) / max(r["ok"], 1) * 1e6)
                old_rate, new_rate = (statistics.median(rate[s]) for s in ("old", "new"))
                old_cpu, new_cpu = (statistics.median(cpu_us[s]) for s in ("old", "new"))
                kind = "stream" if stream else "plain"
                print(
                    f"{'/v1' if api == 'openai' else '/api':<4} {kind:<6} c={concurrency:<3}"
                    f" req/s {old_rate:7.1f} → {new_rate:7.1f} (×{new_rate / old_rate:.2f})"
                    f"   CPU µs/req {old_cpu:6.0f} → {new_cpu:6.0f} (×{new_cpu / old_cpu:.2f})",
                    flush=True,
                )
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(tree)], capture_output=True)


if __name__ == "__main__":
    main()
