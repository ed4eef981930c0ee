"""Served models (the pool's cards + what their files say) → /api/tags, /api/show, /api/ps."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from vllama.names import tagged
from vllama.translate.responses import rfc3339_offset
from vllama.translate.types import ModelCard, ModelFacts

# vLLM keeps a model loaded for the engine's lifetime: "expires" far in the future.
FOREVER_UNIX = 32503680000.0  # 3000-01-01T00:00:00Z
_CAPABILITY_ORDER = ("completion", "embedding", "tools", "thinking", "vision")
_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float8_e4m3fn": "F8_E4M3"}


def _config(facts: ModelFacts | None) -> Mapping[str, Any]:
    config = facts.config if facts is not None else None
    return config if isinstance(config, Mapping) else {}


def architecture(facts: ModelFacts | None) -> str:
    model_type = _config(facts).get("model_type")
    return model_type if isinstance(model_type, str) and model_type else "unknown"


def human_count(n: int) -> str:
    """A parameter count as Ollama prints it: 7.6B, 494.03M, 22.57M, 1.20K."""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.2f}K"
    return str(n)


def quantization(facts: ModelFacts | None) -> str:
    config = _config(facts)
    quant = config.get("quantization_config")
    if isinstance(quant, Mapping) and isinstance(quant.get("quant_method"), str):
        return str(quant["quant_method"]).upper()
    dtype = config.get("torch_dtype") or config.get("dtype")
    if isinstance(dtype, str):
        return _DTYPES.get(dtype, dtype.upper())
    stored = facts.weight_dtype if facts is not None else None
    return stored or "unknown"  # the safetensors dtype names are Ollama's already (F32, BF16)


def details(facts: ModelFacts | None) -> dict[str, Any]:
    family = architecture(facts)
    count = facts.parameter_count if facts is not None else None
    return {
        "parent_model": "",
        "format": "safetensors",
        "family": family,
        "families": [family],
        "parameter_size": human_count(count) if count else "",
        "quantization_level": quantization(facts),
    }


def digest(card: ModelCard, facts: ModelFacts | None) -> str:
    """Stable across restarts: what the engine loaded (root, id, context) and its config."""
    material = json.dumps(
        [card.id, card.root, card.max_model_len, dict(_config(facts))],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def _modified(card: ModelCard, facts: ModelFacts | None) -> str:
    when = facts.modified_unix if facts is not None and facts.modified_unix else card.created
    return rfc3339_offset(float(when))


def _size(facts: ModelFacts | None) -> int:
    return facts.size_bytes if facts is not None and facts.size_bytes else 0


def capabilities(card: ModelCard) -> list[str]:
    caps = set(card.capabilities) or {"completion"}
    return [c for c in _CAPABILITY_ORDER if c in caps]


def tags_entry(card: ModelCard, facts: ModelFacts | None, name: str) -> dict[str, Any]:
    name = tagged(name)
    return {
        "name": name,
        "model": name,
        "modified_at": _modified(card, facts),
        "size": _size(facts),
        "digest": digest(card, facts),
        "details": details(facts),
        "capabilities": capabilities(card),
    }


def ps_entry(
    card: ModelCard,
    facts: ModelFacts | None,
    name: str,
    *,
    expires_unix: float | None = None,
    size: int | None = None,
    size_vram: int | None = None,
) -> dict[str, Any]:
    """A loaded model. Engines vllama starts on demand give their expiry (None: never)
    and memory; a fronted engine keeps its model for its lifetime, holding its weights."""
    name = tagged(name)
    weights = _size(facts)
    return {
        "name": name,
        "model": name,
        "size": weights if size is None else size,
        "digest": digest(card, facts),
        "details": details(facts),
        "expires_at": rfc3339_offset(FOREVER_UNIX if expires_unix is None else expires_unix),
        "size_vram": weights if size_vram is None else size_vram,
        "context_length": card.max_model_len or 0,
    }


def parameters_text(card: ModelCard, facts: ModelFacts | None) -> str:
    """Modelfile-style `key value` lines (Continue parses num_ctx and stop from these)."""
    lines: list[tuple[str, str]] = []
    if card.max_model_len:
        lines.append(("num_ctx", str(card.max_model_len)))
    gen = facts.generation_config if facts is not None else None
    if isinstance(gen, Mapping):
        for ours, theirs in (
            ("temperature", "temperature"),
            ("top_k", "top_k"),
            ("top_p", "top_p"),
            ("min_p", "min_p"),
            ("repeat_penalty", "repetition_penalty"),
        ):
            value = gen.get(theirs)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append((ours, str(value)))
    return "\n".join(f"{key:<30} {value}" for key, value in lines)


def model_info(card: ModelCard, facts: ModelFacts | None, name: str) -> dict[str, Any]:
    arch = architecture(facts)
    config = _config(facts)
    info: dict[str, Any] = {"general.architecture": arch, "general.basename": name}
    count = facts.parameter_count if facts is not None else None
    if count:
        info["general.parameter_count"] = count
    if card.max_model_len:
        info[f"{arch}.context_length"] = card.max_model_len
    for ours, theirs in (
        ("embedding_length", "hidden_size"),
        ("block_count", "num_hidden_layers"),
        ("attention.head_count", "num_attention_heads"),
        ("attention.head_count_kv", "num_key_value_heads"),
        ("feed_forward_length", "intermediate_size"),
        ("vocab_size", "vocab_size"),
    ):
        value = config.get(theirs)
        if isinstance(value, int) and not isinstance(value, bool):
            info[f"{arch}.{ours}"] = value
    return info


def show_response(card: ModelCard, facts: ModelFacts | None, name: str) -> dict[str, Any]:
    """POST /api/show: always `model_info`, `details`, `capabilities`, `parameters`."""
    parameters = parameters_text(card, facts)
    template = facts.chat_template if facts is not None and facts.chat_template else ""
    source = card.root or card.id
    modelfile = f"# Modelfile generated by vllama (served by vLLM)\nFROM {source}\n" + "".join(
        f"PARAMETER {line}\n" for line in parameters.splitlines()
    )
    return {
        "license": "",
        "modelfile": modelfile,
        "parameters": parameters,
        "template": template or "{{ .Prompt }}",
        "details": details(facts),
        "model_info": model_info(card, facts, name),
        "capabilities": capabilities(card),
        "modified_at": _modified(card, facts),
    }
