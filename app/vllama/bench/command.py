"""`vllama bench`: load against any Ollama or OpenAI endpoint, as a table or `--json`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from vllama.bench.load import LoadSpec, sweep
from vllama.config import DEFAULT_PORT

_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("conc", lambda s: s["concurrency"]),
    ("ok", lambda s: s["ok"]),
    ("err", lambda s: s["errors"]),
    ("req/s", lambda s: s["requests_per_s"]),
    ("tok/s", lambda s: s["output_tokens_per_s"]),
    ("ttft p50", lambda s: s["ttft_ms"]["p50"]),
    ("ttft p99", lambda s: s["ttft_ms"]["p99"]),
    ("itl p50", lambda s: s["itl_ms"]["p50"]),
    ("itl p99", lambda s: s["itl_ms"]["p99"]),
    ("e2e p50", lambda s: s["latency_ms"]["p50"]),
    ("e2e p90", lambda s: s["latency_ms"]["p90"]),
    ("e2e p99", lambda s: s["latency_ms"]["p99"]),
    ("client cpu", lambda s: s["client_cpu_share"]),
]


def _concurrency_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers, e.g. 1,8,32") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency values must be 1 or more")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url",
        nargs="?",
        default=f"http://127.0.0.1:{DEFAULT_PORT}",
        help="the target's base URL (default: the local façade)",
    )
    parser.add_argument("--model", required=True, help="model name as the target knows it")
    parser.add_argument("--api", choices=["ollama", "openai"], default="ollama")
    parser.add_argument(
        "--concurrency",
        type=_concurrency_list,
        default=[1],
        help="workers, or a comma list for a sweep (default 1)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="requests per level (default 100 unless --duration is given)",
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds per level")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open loop: arrivals per second (concurrency caps in-flight)",
    )
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--api-key", default=None, help="sent as Authorization: Bearer")
    parser.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def format_table(levels: list[dict[str, Any]]) -> str:
    rows = [[name for name, _ in _COLUMNS]]
    for level in levels:
        rows.append(["-" if (v := get(level)) is None else str(v) for _, get in _COLUMNS])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines) + "\n(latencies in ms; client cpu = share of one core the client used)"


def run(args: argparse.Namespace) -> int:
    requests = args.requests if args.requests is not None or args.duration is not None else 100
    try:
        spec = LoadSpec(
            url=args.url.rstrip("/"),
            model=args.model,
            api=args.api,
            stream=args.stream,
            prompt_tokens=args.prompt_tokens,
            max_tokens=args.max_tokens,
            concurrency=args.concurrency[0],
            requests=requests,
            duration_s=args.duration,
            rate=args.rate,
            timeout_s=args.timeout,
            api_key=args.api_key,
        )
    except ValueError as exc:
        print(f"vllama bench: {exc}", file=sys.stderr)
        return 2
    levels = asyncio.run(sweep(spec, args.concurrency))
    if args.json:
        print(json.dumps({"target": spec.url, "model": spec.model, "levels": levels}, indent=2))
    else:
        print(f"{spec.api} {spec.url} model={spec.model} stream={spec.stream}")
        print(format_table(levels))
    failed = all(level["ok"] == 0 for level in levels)
    if failed:
        print(
            "vllama bench: every request failed; check the URL, the model name and the key",
            file=sys.stderr,
        )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllama bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
