"""How long one large, legal request stalls every other request (issue 13).

A façade (`vllama serve`, the code of this tree or of `--app-dir`) in front of the instant
upstream (tests/perf/instant_upstream.py: the engine's own work is not what is measured);
while one 30 MB request is read, parsed, translated and forwarded, a second client asks
`GET /api/version` every 5 ms. The figure is the slowest of those answers: the time the
event loop was not serving anyone else.

    python -m tests.perf.bench_big_body [--app-dir OTHER_CHECKOUT/app] [--rounds 3]

Not a pass/fail test: a benchmark (docs/performance-analysis.md has the figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.perf import procs

TARGET_BYTES = 30 * 1024 * 1024


def bodies() -> dict[str, tuple[str, bytes]]:
    per_message = TARGET_BYTES // 4096
    text = "lorem ipsum dolor sit amet " * (per_message // 27)
    messages = [{"role": "user", "content": text} for _ in range(4096)]
    many = [{"role": "user", "content": "hi", "images": ["aGk="] * 10}] * 60_000
    return {
        # Refused now (max_messages, max_images); before, seconds of translation.
        "ollama, 60000 x 10 images": (
            "/api/chat",
            json.dumps({"model": "vllama-demo", "messages": many, "stream": False}).encode(),
        ),
        "ollama, 4096 messages": (
            "/api/chat",
            json.dumps({"model": "vllama-demo", "messages": messages, "stream": False}).encode(),
        ),
        "openai, 4096 messages": (
            "/v1/chat/completions",
            json.dumps({"model": "vllama-demo", "messages": messages}).encode(),
        ),
        "openai, one 30 MB string": (
            "/v1/chat/completions",
            json.dumps(
                {
                    "model": "vllama-demo",
                    "messages": [{"role": "user", "content": "x" * TARGET_BYTES}],
                }
            ).encode(),
        ),
    }


def stall(url: str, path: str, body: bytes) -> tuple[float, float, int]:
    """(slowest ping in s, the big request's own time in s, its status)."""
    pings: list[float] = []
    stop = threading.Event()

    def ping() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                c.get("/api/version")
                pings.append(time.perf_counter() - t0)
                time.sleep(0.005)

    pinger = threading.Thread(target=ping)
    pinger.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    r = httpx.post(f"{url}{path}", content=body, timeout=120)
    took = time.perf_counter() - t0
    time.sleep(0.2)
    stop.set()
    pinger.join()
    return max(pings), took, r.status_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app-dir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with (
        procs.running(procs.instant_upstream(), "/health", 30) as up,
        procs.running(procs.facade(up.url, app_dir=args.app_dir), "/health", 120) as facade,
    ):
        for name, (path, body) in bodies().items():
            runs = [stall(facade.url, path, body) for _ in range(args.rounds)]
            results[name] = {
                "bytes": len(body),
                "status": sorted({status for _, _, status in runs}),
                "max_stall_s": round(max(s for s, _, _ in runs), 3),
                "median_stall_s": round(statistics.median(s for s, _, _ in runs), 3),
                "request_s": round(statistics.median(t for _, t, _ in runs), 3),
            }
            print(f"{name:28s} {json.dumps(results[name])}", flush=True)


if __name__ == "__main__":
    main()
