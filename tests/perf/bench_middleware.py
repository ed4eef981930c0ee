"""The request middleware's own cost per request, called directly (no HTTP, no network):
median over many calls of (middleware + bare app) − (bare app), for a GET and for an
inference POST (its body read, parsed once, costed, admitted, watched for a client that
leaves). Part of `make bench`.

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
    "headers": [
        (b"host", b"localhost"),
        (b"user-agent", b"bench"),
        (b"authorization", b"Bearer k1"),
    ],
    "client": ("127.0.0.1", 5000),
    "query_string": b"",
}
BODY = b'{"model": "vllama-demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}'
POST_SCOPE = {
    **SCOPE,
    "method": "POST",
    "path": "/v1/chat/completions",
    "headers": [
        *SCOPE["headers"],  # type: ignore[misc]
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ],
}


async def bare(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def receive_body() -> Any:
    """The body once; then, as uvicorn does, nothing until the client leaves."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": BODY, "more_body": False}

    return receive


async def send(message: Any) -> None:
    return None


async def median_cost(app: Any, n: int, post: bool = False) -> float:
    scope = POST_SCOPE if post else SCOPE
    times = []
    for _ in range(n):
        recv = receive_body() if post else receive
        t0 = time.perf_counter()
        await app(dict(scope), recv, send)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def measure(rounds: int = 5, n: int = 3000) -> dict[str, float]:
    settings = Settings(api_keys=[ApiKey(key="k1", name="bench")])
    wrapped = RequestContextMiddleware(bare, settings=settings, metrics=Metrics(), keys=None)
    out = {}
    for name, post in (
        ("middleware_added_us_median", False),
        ("inference_post_added_us_median", True),
    ):
        await median_cost(wrapped, 200, post)  # create the label children first
        added = []
        for _ in range(rounds):  # interleaved, so drift hits both alike
            added.append(await median_cost(wrapped, n, post) - await median_cost(bare, n, post))
        out[name] = round(statistics.median(added) * 1e6, 1)
    return out


def main() -> None:
    print(asyncio.run(measure()))


if __name__ == "__main__":
    main()
