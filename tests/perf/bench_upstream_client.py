"""aiohttp vs httpx as the façade's upstream client: same upstream, same load, same run.

Each round runs every (client, mode, concurrency) cell once, in a fresh random order, so
drift on a shared machine hits both clients alike; figures are medians over rounds, and
ratios (aiohttp / httpx) are taken per round before the median. The load is bounded by a
request count and a time limit per cell. The upstream is the instant server from
tests/perf/instant_upstream.py (what the client itself costs is then what shows), or a
real engine with --engine URL.

    python -m tests.perf.bench_upstream_client [--rounds 5] [--requests 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import uvloop

from tests.perf import procs

MODEL = "vllama-demo"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
Client = Callable[[bool], Awaitable[int]]  # one request (stream or not) -> bytes received


def aiohttp_client(session: aiohttp.ClientSession, url: str) -> Client:
    data = json.dumps(BODY).encode()
    sdata = json.dumps({**BODY, "stream": True}).encode()
    headers = {"Content-Type": "application/json"}

    async def one(stream: bool) -> int:
        async with session.post(url, data=sdata if stream else data, headers=headers) as r:
            n = 0
            async for chunk in r.content.iter_any():
                n += len(chunk)
            return n

    return one


def httpx_client(client: httpx.AsyncClient, url: str) -> Client:
    data = json.dumps(BODY).encode()
    sdata = json.dumps({**BODY, "stream": True}).encode()
    headers = {"Content-Type": "application/json"}

    async def one(stream: bool) -> int:
        req = client.build_request("POST", url, content=sdata if stream else data, headers=headers)
        r = await client.send(req, stream=True)
        try:
            n = 0
            async for chunk in r.aiter_raw():
                n += len(chunk)
            return n
        finally:
            await r.aclose()

    return one


async def cell(
    one: Client, stream: bool, concurrency: int, requests: int, limit_s: float
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + limit_s
    remaining = requests

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            t = time.perf_counter()
            try:
                if await one(stream) <= 0:
                    errors += 1
            except Exception:
                errors += 1
            latencies.append(time.perf_counter() - t)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "rps": n / wall,
        "p50_ms": latencies[n // 2] * 1000,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000,
        "cpu_us_per_req": cpu / n * 1e6,  # the client's own cost (the upstream is elsewhere)
    }


async def run(args: argparse.Namespace, base: str) -> dict[str, Any]:
    url = f"{base}/v1/chat/completions"
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30), auto_decompress=False
    )
    client = httpx.AsyncClient(
        timeout=None, limits=httpx.Limits(max_connections=None, max_keepalive_connections=1000)
    )
    clients = {"aiohttp": aiohttp_client(session, url), "httpx": httpx_client(client, url)}
    cells = [(c, s, n) for c in clients for s in (False, True) for n in args.concurrency]
    results: dict[tuple[str, bool, int], list[dict[str, float]]] = {k: [] for k in cells}
    try:
        for name in clients:  # warm up both pools
            await cell(clients[name], False, max(args.concurrency), 50, 5)
        for _ in range(args.rounds):
            random.shuffle(cells)
            for name, stream, conc in cells:
                results[(name, stream, conc)].append(
                    await cell(clients[name], stream, conc, args.requests, args.limit_s)
                )
    finally:
        await session.close()
        await client.aclose()

    table = []
    for stream in (False, True):
        for conc in args.concurrency:
            a, h = results[("aiohttp", stream, conc)], results[("httpx", stream, conc)]
            row: dict[str, Any] = {"stream": stream, "concurrency": conc}
            for metric in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req"):
                row[f"aiohttp_{metric}"] = round(statistics.median(r[metric] for r in a), 2)
                row[f"httpx_{metric}"] = round(statistics.median(r[metric] for r in h), 2)
                row[f"ratio_{metric}"] = round(
                    statistics.median(x[metric] / y[metric] for x, y in zip(a, h, strict=True)), 3
                )
            row["errors"] = sum(r["errors"] for r in a + h)
            table.append(row)
    return {
        "upstream": "instant" if args.engine is None else args.engine,
        "rounds": args.rounds,
        "requests_per_cell": args.requests,
        "versions": {"aiohttp": aiohttp.__version__, "httpx": httpx.__version__},
        "ratio": "aiohttp / httpx, median of per-round ratios",
        "cells": table,
    }


def text(report: dict[str, Any]) -> str:
    lines = [
        f"upstream {report['upstream']}, {report['rounds']} rounds, "
        f"{report['requests_per_cell']} requests per cell; ratio = {report['ratio']}",
        f"{'mode':<7}{'conc':>5} | {'rps aio':>9}{'rps httpx':>10}{'x':>7} | "
        f"{'p50 aio':>8}{'httpx':>8}{'x':>7} | {'p99 aio':>8}{'httpx':>8} | "
        f"{'cpu µs aio':>11}{'httpx':>8}{'x':>7}",
    ]
    for r in report["cells"]:
        lines.append(
            f"{'stream' if r['stream'] else 'json':<7}{r['concurrency']:>5} | "
            f"{r['aiohttp_rps']:>9.0f}{r['httpx_rps']:>10.0f}{r['ratio_rps']:>7.2f} | "
            f"{r['aiohttp_p50_ms']:>8.2f}{r['httpx_p50_ms']:>8.2f}{r['ratio_p50_ms']:>7.2f} | "
            f"{r['aiohttp_p99_ms']:>8.2f}{r['httpx_p99_ms']:>8.2f} | "
            f"{r['aiohttp_cpu_us_per_req']:>11.0f}{r['httpx_cpu_us_per_req']:>8.0f}"
            f"{r['ratio_cpu_us_per_req']:>7.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=400, help="per cell (bounded load)")
    parser.add_argument("--limit-s", type=float, default=10.0, help="time limit per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--engine", help="a running engine's URL instead of the instant upstream")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        base = (
            args.engine
            or stack.enter_context(procs.running(procs.instant_upstream(), "/health", 30)).url
        )
        report = uvloop.run(run(args, base))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report))
    print(text(report))


if __name__ == "__main__":
    main()
