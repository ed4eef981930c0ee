"""The `:latest` rule (vllama.names): `x` and `x:latest` are one model; other tags stay."""

from __future__ import annotations

from vllama.names import resolve_alias, strip_latest, tagged


def test_only_latest_is_stripped() -> None:
    assert strip_latest("qwen:latest") == "qwen"
    assert strip_latest("qwen2.5:0.5b") == "qwen2.5:0.5b"
    assert strip_latest("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


def test_untagged_names_get_latest_in_lists() -> None:
    assert tagged("vllama-demo") == "vllama-demo:latest"
    assert tagged("qwen2.5:0.5b") == "qwen2.5:0.5b"
    assert tagged("localhost:5000/org/model") == "localhost:5000/org/model:latest"


def test_aliases_answer_with_and_without_latest() -> None:
    aliases = {"small": "org/small", "exact:latest": "org/exact"}
    assert resolve_alias(aliases, "small") == "org/small"
    assert resolve_alias(aliases, "small:latest") == "org/small"
    assert resolve_alias(aliases, "exact:latest") == "org/exact"
    assert resolve_alias(aliases, "small:v2") == "small:v2"  # another tag: another name
    assert resolve_alias(aliases, "unknown") == "unknown"
