"""Model names: Ollama's `:latest` rule, written once, and the names people type.

Ollama names carry a `:tag` and an untagged name means `:latest`; engines and the Hugging
Face hub know plain ids. So `x` and `x:latest` name the same model everywhere: in aliases,
the pool, the model store and the lists the API returns. Any other tag is part of the name.
"""

from __future__ import annotations

from collections.abc import Mapping

LATEST = ":latest"


def strip_latest(name: str) -> str:
    """`x:latest` -> `x`; any other tag stays."""
    return name.removesuffix(LATEST)


def tagged(name: str) -> str:
    """Ollama's spelling in lists: untagged names get `:latest` (Open WebUI relies on it)."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + LATEST


def resolve_alias(aliases: Mapping[str, str], name: str) -> str:
    """The target of `name`, or of `name` without `:latest`, in `aliases`; else `name`."""
    if name in aliases:
        return aliases[name]
    return aliases.get(strip_latest(name), name)


# Names people type, from Ollama's library, and the Hugging Face repos that hold the same
# model (the instruct/chat variant Ollama's tag packages, in the precision its authors
# publish: Ollama pulls a 4-bit GGUF, vLLM loads these safetensors, so sizes differ).
# `[aliases]` in the config adds names and wins over this table; a repo id works as is.
# An untagged name is `:latest`, which Ollama points at the size listed first here.
LIBRARY: dict[str, str] = {
    "qwen2.5": "Qwen/Qwen2.5-7B-Instruct",
    "qwen2.5:0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5:1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5:3b": "Qwen/Qwen2.5-3B-Instruct",
    "qwen2.5:7b": "Qwen/Qwen2.5-7B-Instruct",
    "qwen2.5:14b": "Qwen/Qwen2.5-14B-Instruct",
    "qwen2.5:32b": "Qwen/Qwen2.5-32B-Instruct",
    "qwen2.5:72b": "Qwen/Qwen2.5-72B-Instruct",
    "qwen2.5-coder": "Qwen/Qwen2.5-Coder-7B-Instruct",
    "qwen2.5-coder:1.5b": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
    "qwen2.5-coder:7b": "Qwen/Qwen2.5-Coder-7B-Instruct",
    "qwen3": "Qwen/Qwen3-8B",
    "qwen3:0.6b": "Qwen/Qwen3-0.6B",
    "qwen3:1.7b": "Qwen/Qwen3-1.7B",
    "qwen3:4b": "Qwen/Qwen3-4B",
    "qwen3:8b": "Qwen/Qwen3-8B",
    "qwen3:14b": "Qwen/Qwen3-14B",
    "qwen3:32b": "Qwen/Qwen3-32B",
    "llama3.2": "meta-llama/Llama-3.2-3B-Instruct",
    "llama3.2:1b": "meta-llama/Llama-3.2-1B-Instruct",
    "llama3.2:3b": "meta-llama/Llama-3.2-3B-Instruct",
    "llama3.1": "meta-llama/Llama-3.1-8B-Instruct",
    "llama3.1:8b": "meta-llama/Llama-3.1-8B-Instruct",
    "llama3.1:70b": "meta-llama/Llama-3.1-70B-Instruct",
    "gemma3": "google/gemma-3-4b-it",
    "gemma3:1b": "google/gemma-3-1b-it",
    "gemma3:4b": "google/gemma-3-4b-it",
    "gemma3:12b": "google/gemma-3-12b-it",
    "gemma3:27b": "google/gemma-3-27b-it",
    "mistral": "mistralai/Mistral-7B-Instruct-v0.3",
    "mistral:7b": "mistralai/Mistral-7B-Instruct-v0.3",
    "phi4": "microsoft/phi-4",
    "phi4-mini": "microsoft/Phi-4-mini-instruct",
    "deepseek-r1": "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
    "deepseek-r1:8b": "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
    "deepseek-r1:1.5b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "deepseek-r1:7b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
    "deepseek-r1:14b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
    "deepseek-r1:32b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
    "deepseek-r1:70b": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
    "smollm2": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "smollm2:135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2:360m": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "smollm2:1.7b": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "tinyllama": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    # Embedding models (served with vLLM's --runner pooling).
    "all-minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "all-minilm:22m": "sentence-transformers/all-MiniLM-L6-v2",
    "all-minilm:33m": "sentence-transformers/all-MiniLM-L12-v2",
    "nomic-embed-text": "nomic-ai/nomic-embed-text-v1.5",
    "mxbai-embed-large": "mixedbread-ai/mxbai-embed-large-v1",
    "bge-m3": "BAAI/bge-m3",
}


def library_target(name: str) -> str | None:
    """The Hugging Face repo of a library name (`qwen2.5:0.5b`, `qwen2.5:latest`), or None."""
    return LIBRARY.get(strip_latest(name))


def resolve_name(aliases: Mapping[str, str], name: str) -> str:
    """What a typed name means: a configured alias, else a library name, else itself."""
    target = resolve_alias(aliases, name)
    if target != name:
        return target
    return library_target(name) or name


# Ollama's name rules (ollama/ollama types/model/name.go, ParseName and IsFullyQualified):
# [host/][namespace/]model[:tag], each part starting with a letter, digit or `_`, then
# letters, digits, `_`, `-`, plus `.` (not in the namespace) and `:` (host only); host
# 1-350 characters, the others 1-80. Missing parts take Ollama's defaults.
_PART_MAX = {"host": 350, "namespace": 80, "model": 80, "tag": 80}
_EXTRA = {"host": "-_.:", "namespace": "-_", "model": "-_.", "tag": "-_."}
MAX_NAME_LENGTH = 350 + 1 + 80 + 1 + 80 + 1 + 80


def _valid_part(kind: str, part: str) -> bool:
    if not 1 <= len(part) <= _PART_MAX[kind] or not part.isascii():
        return False
    if not (part[0].isalnum() or part[0] == "_"):
        return False
    extra = _EXTRA[kind]
    return all(c.isalnum() or c in extra for c in part[1:])


def is_valid_name(name: str) -> bool:
    """Whether `name` is a model name Ollama itself would accept (`ollama cp` targets)."""
    if not name or len(name) > MAX_NAME_LENGTH:
        return False
    rest, tag = name, "latest"
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag = rest.rsplit(":", 1)
    parts = rest.split("/")
    if len(parts) > 3:
        host = "/".join(parts[:-2])  # "scheme://host" keeps its slashes
        parts = [host, *parts[-2:]]
    host, namespace, model = ["registry.ollama.ai", "library", *parts][-3:]
    host = host.split("://", 1)[-1]
    return (
        _valid_part("host", host)
        and _valid_part("namespace", namespace)
        and _valid_part("model", model)
        and _valid_part("tag", tag)
    )
