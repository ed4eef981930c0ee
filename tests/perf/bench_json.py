"""The per-event JSON work of a stream, per codec: the standard library, orjson, msgspec.

Parses one vLLM 0.32 chat-completion chunk (the event the instant upstream streams) and
encodes one Ollama /api/chat chunk, in rounds of a fresh random order (the machine is
shared: each round's codecs run back to back). Prints the median µs per call and each
codec ÷ json, the median of the per-round ratios.

    python -m tests.perf.bench_json [--rounds 15] [--calls 20000]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from statistics import median
from typing import Any

import msgspec
import orjson

EVENT = orjson.dumps(
    {
        "id": "chatcmpl-instant-0123456789abcdef",
        "object": "chat.completion.chunk",
        "created": 1764662400,
        "model": "vllama-demo",
        "choices": [
            {
                "index": 0,
                "delta": {"content": "hello "},
                "logprobs": None,
                "finish_reason": None,
                "token_ids": None,
            }
        ],
    }
)
CHUNK: dict[str, Any] = {
    "model": "vllama-demo",
    "created_at": "2026-12-02T09:00:00.123456Z",
    "message": {"role": "assistant", "content": "hello "},
    "done": False,
}

_dec = msgspec.json.Decoder()
_enc = msgspec.json.Encoder()
CODECS: dict[str, tuple[Callable[[bytes], Any], Callable[[Any], bytes]]] = {
    "json": (
        json.loads,
        lambda o: json.dumps(o, ensure_ascii=False, separators=(",", ":")).encode(),
    ),
    "orjson": (orjson.loads, orjson.dumps),
    "msgspec": (_dec.decode, _enc.encode),
}


def _us(fn: Callable[[Any], Any], arg: Any, calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn(arg)
    return (time.perf_counter_ns() - start) / calls / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    runs: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        names = list(CODECS)
        random.shuffle(names)
        for name in names:
            loads, dumps = CODECS[name]
            runs.setdefault((name, "parse"), []).append(_us(loads, EVENT, args.calls))
            runs.setdefault((name, "encode"), []).append(_us(dumps, CHUNK, args.calls))
    for op in ("parse", "encode"):
        base = runs[("json", op)]
        for name in CODECS:
            mine = runs[(name, op)]
            ratio = median(m / b for m, b in zip(mine, base, strict=True))
            print(f"{op:<7}{name:<9}{median(mine):7.2f} µs  ÷ json {ratio:.2f}")


if __name__ == "__main__":
    main()
