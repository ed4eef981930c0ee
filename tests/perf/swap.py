"""How long swapping models takes on this machine: a real `vllama serve` with a memory
budget that fits one engine, two models pulled through the local hub, and requests that
alternate between them, so each one stops the other's engine and starts its own.

    .venv/bin/python -m tests.perf.swap [--rounds 2] [--eager] [--json FILE]

Per swap it reports what the client waited for its first answer (the `load_duration`
Ollama's API reports: stopping the old engine, starting the new one) and the stop alone
(from the façade's log). A benchmark, not a test: the figures depend on the machine and
its load (docs/lifecycle.md has the measured ones). The CPU build has no sleep mode;
on a GPU, sleep/wake replaces the stop/start measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.hub import DEMO_B_REPO, DEMO_REPO, start_hub
from tests.unit.cli.serve_proc import run_serve

_STOPPED = re.compile(r"model (\S+) stopped in ([\d.]+)s")


def _post(url: str, body: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        lines = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    return lines[-1]


def measure(rounds: int, eager: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with start_hub(tmp / "hub") as hub:
            env = {
                "HF_ENDPOINT": hub.url,
                "VLLAMA_CACHE_DIR": str(tmp / "cache"),
                "VLLAMA_MEMORY_BUDGET": "4GiB",  # one engine at a time (2.5 GiB each)
                "VLLAMA_KEEP_ALIVE": "-1",  # only the budget unloads
            }
            args = ["--", "--enforce-eager"] if eager else []
            with run_serve(args, tmp, env=env) as serve:
                for model in (DEMO_REPO, DEMO_B_REPO):
                    _post(f"{serve.url}/api/pull", {"model": model})
                swaps: list[dict[str, Any]] = []
                sequence = [DEMO_REPO] + [DEMO_B_REPO, DEMO_REPO] * rounds
                for i, model in enumerate(sequence):
                    started = time.monotonic()
                    final = _post(
                        f"{serve.url}/api/generate",
                        {"model": model, "prompt": "hi", "options": {"num_predict": 8}},
                    )
                    waited = time.monotonic() - started
                    stops = _STOPPED.findall(serve.text())
                    swaps.append(
                        {
                            "model": model,
                            "first": i == 0,
                            "answer_s": round(waited, 2),
                            "load_s": round(final["load_duration"] / 1e9, 2),
                            "stop_s": float(stops[-1][1]) if i and stops else None,
                        }
                    )
                    print(json.dumps(swaps[-1]), flush=True)
    loads = [s["load_s"] for s in swaps if not s["first"]]
    stop_times = [s["stop_s"] for s in swaps if s["stop_s"] is not None]
    return {
        "eager": eager,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "swaps": swaps,
        "swap_load_s_median": statistics.median(loads) if loads else None,
        "stop_s_median": statistics.median(stop_times) if stop_times else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="B then A, this many times")
    parser.add_argument("--eager", action="store_true", help="engines with --enforce-eager")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    result = measure(args.rounds, args.eager)
    print(json.dumps({k: v for k, v in result.items() if k != "swaps"}, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
