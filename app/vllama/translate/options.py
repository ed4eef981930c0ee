"""Ollama `options` → vLLM sampling parameters (docs/api-compatibility.md has the table).

Omitted options are NOT filled with Ollama's defaults: vLLM then applies the model's own
generation_config.json, which is what the model's authors tuned it for.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from vllama.translate.errors import TranslationError
from vllama.translate.fields import require_object

Kind = Literal["integer", "float", "boolean", "array"]

# Every key Ollama's Options struct knows, with the type it enforces. Keys that vLLM
# has no equivalent for (num_ctx is fixed by --max-model-len) are type-checked and ignored.
KNOWN: dict[str, Kind] = {
    "num_keep": "integer",
    "seed": "integer",
    "num_predict": "integer",
    "top_k": "integer",
    "top_p": "float",
    "min_p": "float",
    "typical_p": "float",
    "repeat_last_n": "integer",
    "temperature": "float",
    "repeat_penalty": "float",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "stop": "array",
    "num_ctx": "integer",
    "num_batch": "integer",
    "num_gpu": "integer",
    "main_gpu": "integer",
    "use_mmap": "boolean",
    "num_thread": "integer",
    "draft_num_predict": "integer",
}

# Same meaning, same name in vLLM's OpenAI server (top_k/min_p are vLLM extras).
_SAME_NAME = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty")


def _checked(key: str, value: Any, kind: Kind) -> Any:
    bad = TranslationError(f'option "{key}" must be of type {kind}', f"options.{key}")
    if kind == "boolean":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind == "array":
        if isinstance(value, str):  # a lone stop string is what people mean
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TranslationError(
                f'option "{key}" must be of type array of strings', f"options.{key}"
            )
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad
    if not math.isfinite(value):
        raise TranslationError(f'option "{key}" must be a finite number', f"options.{key}")
    if kind == "integer":
        if isinstance(value, float) and not value.is_integer():
            raise bad
        return int(value)
    return float(value)


def parse_options(raw: Any) -> dict[str, Any]:
    """The known options, type-checked; unknown and legacy keys (mirostat, tfs_z…) dropped."""
    if raw is None:
        return {}
    options = require_object(raw, "options")
    out: dict[str, Any] = {}
    for key, value in options.items():
        kind = KNOWN.get(key)
        if kind is None or value is None:
            continue
        out[key] = _checked(key, value, kind)
    return out


def sampling_params(options: dict[str, Any]) -> dict[str, Any]:
    """vLLM request fields for parsed options. `max_tokens` is left to the caller."""
    out: dict[str, Any] = {k: options[k] for k in _SAME_NAME if k in options}
    if "repeat_penalty" in options:
        out["repetition_penalty"] = options["repeat_penalty"]
    seed = options.get("seed")
    if seed is not None and seed >= 0:  # Ollama's -1 means "random": send none
        out["seed"] = seed
    if options.get("stop"):
        out["stop"] = options["stop"]
    return out


def max_tokens(options: dict[str, Any]) -> int | None:
    """num_predict > 0 → that many tokens; -1 (until stop) and -2 (fill context) → None."""
    n = options.get("num_predict")
    return n if isinstance(n, int) and n > 0 else None
