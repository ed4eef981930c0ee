"""The request middleware's own cost per request, called directly (no HTTP, no network):
median over many calls of (middleware + bare app) − (bare app). Part of `make bench`.

    python -m tests.perf.bench_middleware
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from vllama.config import ApiKey, Settings
from vllama.observability.metrics import Metrics
from vllama.server.middleware import RequestContextMiddleware

SCOPE = {
    "type": "http",
    "method": "GET",
    "path": "/api/tags",
    "headers": [(b"host", b"facade"), (b"user-agent", b"bench"), (b"authorization", b"Bearer k1")],
    "client": ("127.0.0.1", 5000),
    "query_string": b"",
}


async def bare(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Any) -> None:
    return None


async def median_cost(app: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await app(dict(SCOPE), receive, send)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def measure(rounds: int = 5, n: int = 3000) -> dict[str, float]:
    settings = Settings(api_keys=[ApiKey(key="k1", name="bench")])
    wrapped = RequestContextMiddleware(bare, settings=settings, metrics=Metrics(), keys=None)
    await median_cost(wrapped, 200)  # create the label children first
    added = []
    for _ in range(rounds):  # interleaved, so drift hits both alike
        added.append(await median_cost(wrapped, n) - await median_cost(bare, n))
    return {"middleware_added_us_median": round(statistics.median(added) * 1e6, 1)}


def main() -> None:
    print(asyncio.run(measure()))


if __name__ == "__main__":
    main()
