"""The runtime alias registry: configured aliases, those /api/copy adds and removes, one
`:latest` rule, and the settings left as configured."""

from __future__ import annotations

from vllama.config import Settings
from vllama.upstream.aliases import Aliases
from vllama.upstream.pool import EnginePool


def test_added_aliases_resolve_with_and_without_latest() -> None:
    aliases = Aliases({"demo": "vllama-demo"})
    aliases.add("qwen:latest", "Qwen/Qwen2.5-0.5B-Instruct")
    assert aliases.resolve("qwen") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert aliases.resolve("qwen:latest") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert aliases.resolve("demo:latest") == "vllama-demo"
    assert aliases.items() == [
        ("demo", "vllama-demo"),
        ("qwen", "Qwen/Qwen2.5-0.5B-Instruct"),
    ]


def test_remove_forgets_an_alias_only() -> None:
    aliases = Aliases({"demo": "vllama-demo"})
    assert aliases.remove("demo:latest") is True
    assert aliases.resolve("demo") == "demo"
    assert aliases.remove("demo") is False
    assert aliases.remove("vllama-demo") is False  # a model id is not an alias


def test_of_lists_every_alias_of_a_target_sorted() -> None:
    aliases = Aliases({"b": "m", "a": "m", "c": "other"})
    assert aliases.of("m") == ["a", "b"]
    assert aliases.of("nothing") == []


def test_the_pool_owns_the_registry_and_the_settings_stay_as_configured() -> None:
    settings = Settings.model_validate({"aliases": {"demo": "vllama-demo"}})
    pool = EnginePool(settings)
    pool.aliases.add("mine", "vllama-demo")
    pool.aliases.remove("demo")
    assert settings.aliases == {"demo": "vllama-demo"}
    assert pool.aliases.items() == [("mine", "vllama-demo")]
