"""What a served model's files say: config.json, generation_config.json, chat template,
weight size and parameter count. Reads a local directory or the Hugging Face cache
(never the network) and never raises: a missing or odd file just leaves a field empty.
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A safetensors header is JSON behind an 8-byte length; bigger ones are not real files.
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class ModelFiles:
    config: dict[str, Any] | None = None
    generation_config: dict[str, Any] | None = None
    chat_template: str | None = None
    size_bytes: int | None = None
    parameter_count: int | None = None
    weight_dtype: str | None = None  # safetensors name of the dtype most weights use
    modified_unix: float | None = None


def _cached_file(repo_id: str, filename: str, cache_dir: Path | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    except Exception:  # a malformed repo id, an unreadable cache: nothing known
        return None
    return Path(found) if isinstance(found, str) else None


def model_dir(root: str | None, cache_dir: Path | None = None) -> Path | None:
    """The directory holding the model's files: `root` itself or its snapshot in the HF cache."""
    if not root:
        return None
    try:
        path = Path(root).expanduser()
        if path.is_dir():
            return path
    except OSError:
        return None
    config = _cached_file(root, "config.json", cache_dir)
    return config.parent if config is not None else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_model_config(root: str | None, cache_dir: Path | None = None) -> dict[str, Any] | None:
    """config.json of the model vLLM loaded from `root` (a path or a repo id), or None."""
    directory = model_dir(root, cache_dir)
    return _read_json(directory / "config.json") if directory is not None else None


def _chat_template(directory: Path) -> str | None:
    try:
        jinja = directory / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
    except OSError:
        return None
    template = (_read_json(directory / "tokenizer_config.json") or {}).get("chat_template")
    if isinstance(template, str):
        return template
    if isinstance(template, list):  # named templates: the default one
        for item in template:
            if isinstance(item, dict) and item.get("name") == "default":
                value = item.get("template")
                return value if isinstance(value, str) else None
    return None


def _safetensors_counts(path: Path) -> dict[str, int] | None:
    """Parameters per dtype ("BF16", "F32", ...) from one safetensors file's header."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _MAX_HEADER:
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return None
    if not isinstance(header, dict):
        return None
    counts: dict[str, int] = {}
    for name, tensor in header.items():
        if name == "__metadata__" or not isinstance(tensor, dict):
            continue
        count = 1
        for dim in tensor.get("shape") or []:
            count *= dim if isinstance(dim, int) else 0
        dtype = str(tensor.get("dtype", "?"))
        counts[dtype] = counts.get(dtype, 0) + count
    return counts


def _weights(directory: Path) -> tuple[int | None, int | None, str | None]:
    """(bytes of weights, parameter count, main dtype) from the safetensors (or .bin) files."""
    try:
        tensors = sorted(directory.glob("*.safetensors"))
        files = tensors or sorted(directory.glob("*.bin"))
        size = sum(p.stat().st_size for p in files) or None
    except OSError:
        return None, None, None
    per_file = [_safetensors_counts(p) for p in tensors]
    if not tensors or any(c is None for c in per_file):
        return size, None, None
    totals: dict[str, int] = {}
    for counts in per_file:
        for name, n in (counts or {}).items():
            totals[name] = totals.get(name, 0) + n
    params = sum(totals.values()) or None
    main = max(totals, key=lambda d: totals[d]) if totals else None
    return size, params, main


@functools.lru_cache(maxsize=64)
def read_model_files(root: str | None, cache_dir: Path | None = None) -> ModelFiles:
    """Everything /api/tags and /api/show report about the model at `root` (cached)."""
    directory = model_dir(root, cache_dir)
    if directory is None:
        return ModelFiles()
    config_path = directory / "config.json"
    try:
        modified: float | None = config_path.stat().st_mtime
    except OSError:
        modified = None
    size, params, dtype = _weights(directory)
    return ModelFiles(
        config=_read_json(config_path),
        generation_config=_read_json(directory / "generation_config.json"),
        chat_template=_chat_template(directory),
        size_bytes=size,
        parameter_count=params,
        weight_dtype=dtype,
        modified_unix=modified,
    )
