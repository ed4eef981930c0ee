"""The JSON codec of the per-token path: orjson, measured fastest on vLLM's event shapes
and Ollama's chunks (docs/performance-analysis.md), with the standard library behind it
wherever orjson refuses what `json` accepts (NaN, integers past 64 bits, invalid UTF-8,
keys that are not strings), so that no answer depends on which of the two ran."""

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
