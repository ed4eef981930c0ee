"""Request bodies as JSON, refusing what would otherwise end in a 500 or reach an engine
as something it cannot read: nesting deeper than MAX_DEPTH (Python's parser raises
RecursionError near 1000 levels), integers of more than 4300 digits (Python refuses them
with a message about its own internals), NaN/Infinity and numbers that overflow to
them (not JSON: an engine cannot parse them back), and lone UTF-16 surrogates (`"\\ud800"`
parses, but is not a character and cannot be encoded again).

Every refusal is an `InvalidJson` whose message is safe to show the client.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 128  # tool schemas nest a few dozen levels at most


class InvalidJson(ValueError):
    """The body is not acceptable JSON; `message` is safe to show the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJson(f"number {text[:24]} is out of range")
    return value


def _constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not a JSON value")


def _check(value: Any, *, surrogates: bool) -> None:
    """Depth, walking the containers only; strings too when the raw bytes hold a `\\ud`
    escape (a surrogate may be among them; the walk is then slower)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            items: Any = node.values()
            if surrogates:
                for k in node:
                    _no_surrogate(k)
        elif isinstance(node, list):
            items = node
        else:
            if isinstance(node, str):
                _no_surrogate(node)
            continue
        if depth > MAX_DEPTH:
            raise InvalidJson(f"JSON nested deeper than {MAX_DEPTH} levels")
        for item in items:
            if isinstance(item, (dict, list)) or (surrogates and isinstance(item, str)):
                stack.append((item, depth + 1))


def _no_surrogate(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidJson(
            "a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), which is not "
            "a character; send valid Unicode"
        ) from None


def loads(raw: bytes) -> Any:
    """Parse a request body; InvalidJson (safe message) for anything not acceptable."""
    try:
        value = json.loads(raw, parse_float=_float, parse_constant=_constant)
    except InvalidJson:
        raise
    except RecursionError:
        raise InvalidJson(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise InvalidJson("the body is not valid UTF-8") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # more than sys.get_int_max_str_digits()
            raise InvalidJson("a number is out of range") from None
        # json.JSONDecodeError: its message names the position, nothing internal.
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not JSON"
        where = (
            f" (line {exc.lineno}, column {exc.colno})"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise InvalidJson(f"invalid JSON: {reason}{where}") from None
    _check(value, surrogates=b"\\ud" in raw or b"\\uD" in raw)
    return value
