"""Typed readers for Ollama request fields: wrong types raise TranslationError naming the field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vllama.translate.errors import TranslationError
from vllama.units import parse_duration


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


def keep_alive_seconds(body: Mapping[str, Any]) -> float | None:
    """`keep_alive` as seconds (vllama.units: a number is seconds, a string a Go duration
    such as "5m"; negative: keep loaded). None when the request does not say."""
    value = body.get("keep_alive")
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise TranslationError(f'"keep_alive" {exc}', "keep_alive") from None
