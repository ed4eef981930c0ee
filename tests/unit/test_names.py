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


def test_library_names_people_type() -> None:
    from vllama.names import LIBRARY, library_target, resolve_name

    assert library_target("qwen2.5:0.5b") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert library_target("all-minilm") == library_target("all-minilm:latest")
    assert library_target("Qwen/Qwen2.5-0.5B-Instruct") is None  # a repo id is itself
    # A configured alias wins over the library; unknown names stay themselves.
    assert resolve_name({"qwen2.5:0.5b": "my/finetune"}, "qwen2.5:0.5b") == "my/finetune"
    assert resolve_name({}, "qwen2.5:0.5b") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_name({}, "org/model") == "org/model"
    # Every target is a Hugging Face repo id (org/name), every key an Ollama name.
    assert all(v.count("/") == 1 and ":" not in v for v in LIBRARY.values())
    assert all("/" not in k for k in LIBRARY)


def test_the_library_table_in_the_docs_is_the_code_s() -> None:
    """docs/lifecycle.md lists vllama.names.LIBRARY: one source, checked."""
    import re
    from pathlib import Path

    from vllama.names import LIBRARY

    doc = (Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md").read_text()
    section = doc.split("## Names people type", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|$", section, re.MULTILINE))
    assert rows == LIBRARY
