"""Typed readers for Ollama request fields: wrong types raise TranslationError naming the field."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from vllama.translate.errors import TranslationError


def require_object(value: Any, field: str | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        where = f'"{field}"' if field else "request body"
        raise TranslationError(f"{where} must be a JSON object", field)
    return value


def opt_str(body: Mapping[str, Any], key: str, field: str | None = None) -> str | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise TranslationError(f'"{field or key}" must be a string', field or key)


def opt_bool(body: Mapping[str, Any], key: str, field: str | None = None) -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise TranslationError(f'"{field or key}" must be a boolean', field or key)


def opt_int(body: Mapping[str, Any], key: str, field: str | None = None) -> int | None:
    """JSON numbers with an integral value count as integers (Ollama accepts 5.0)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise TranslationError(f'"{field or key}" must be an integer', field or key)


def opt_list(body: Mapping[str, Any], key: str, field: str | None = None) -> list[Any] | None:
    value = body.get(key)
    if value is None or isinstance(value, list):
        return value
    raise TranslationError(f'"{field or key}" must be an array', field or key)


def model_name(body: Mapping[str, Any], *, legacy_name: bool = False) -> str:
    """`model` (or, where Ollama still accepts it, the legacy `name`)."""
    name = opt_str(body, "model")
    if not name and legacy_name:
        name = opt_str(body, "name")
    if not name:
        raise TranslationError("model is required", "model")
    return name


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(body: Mapping[str, Any]) -> float | None:
    """`keep_alive` as seconds: a number is seconds, a string a Go duration ("5m", "1h30m")."""
    value = body.get("keep_alive")
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise TranslationError('"keep_alive" must be a finite number', "keep_alive")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        text = text.lstrip("+-")
        if text in ("0", ""):
            return 0.0
        try:
            return sign * float(text)  # "300" is seconds too
        except ValueError:
            pass
        pos, total = 0, 0.0
        for match in _DURATION.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNIT_S[match.group(2)]
            pos = match.end()
        if pos == len(text) and pos > 0:
            return sign * total
        raise TranslationError(
            f'"keep_alive" {value!r} is not a duration: use seconds or a string such as "5m"',
            "keep_alive",
        )
    raise TranslationError('"keep_alive" must be a number or a duration string', "keep_alive")
