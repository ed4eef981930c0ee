"""The JSON codec of the per-token path: orjson (tests/perf/bench_json.py: level with msgspec
on vLLM's events and Ollama's chunks, several times the standard library's speed), with the
standard library behind it wherever orjson refuses what `json` accepts (NaN, integers past
64 bits, invalid UTF-8, keys that are not strings), so no answer depends on which one ran."""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """Parse JSON; invalid UTF-8 is replaced, as the standard library's path always did."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return json.loads(text)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON: `json.dumps(obj, ensure_ascii=False, separators=(",", ":"))`."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError: e.g. a key that is not a string
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
