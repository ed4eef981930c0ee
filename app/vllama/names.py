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
