"""What the capability probes (vllama/upstream/capabilities.py) cost an engine.

    python -m tests.perf.probe_cost http://127.0.0.1:18001=vllama-demo \\
        http://127.0.0.1:18311=vllama-scripted --rounds 15

Each probe is sent `rounds` times, one at a time; the median and the highest wall time are
printed with the verdict (an idle engine; the probes run once per engine coming up).
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from vllama.upstream.capabilities import probes, verdict


def measure(url: str, model: str, rounds: int) -> None:
    with httpx.Client(timeout=60) as http:
        for probe in probes(model):
            times, found = [], None
            for _ in range(rounds):
                start = time.perf_counter()
                resp = http.post(f"{url}/v1/chat/completions", json=probe.body)
                times.append((time.perf_counter() - start) * 1000)
                found = verdict(probe.name, resp.status_code, resp.json())
            print(
                f"{model:<18} {probe.name:<9} {found!s:<6} "
                f"median {statistics.median(times):6.1f} ms  max {max(times):6.1f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("engines", nargs="+", metavar="URL=MODEL")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    for item in args.engines:
        url, _, model = item.partition("=")
        measure(url.rstrip("/"), model, args.rounds)


if __name__ == "__main__":
    main()
