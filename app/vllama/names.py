"""Model names: Ollama's `:latest` rule, written once.

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
