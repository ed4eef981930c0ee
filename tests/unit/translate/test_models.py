"""Model cards → /api/tags, /api/show, /api/ps entries."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vllama.models.info import ModelFiles
from vllama.translate.models import (
    digest,
    human_count,
    ps_entry,
    show_response,
    tagged,
    tags_entry,
)


@dataclass(frozen=True)
class Card:
    id: str = "vllama-demo"
    max_model_len: int | None = 512
    root: str | None = "/models/vllama-demo"
    created: int = 1_795_436_914
    capabilities: frozenset[str] = field(default_factory=lambda: frozenset({"completion", "tools"}))


LLAMA = ModelFiles(
    config={
        "model_type": "llama",
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "torch_dtype": "bfloat16",
    },
    generation_config={"temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.1},
    chat_template="{% for m in messages %}{{ m.content }}{% endfor %}",
    size_bytes=724_288,
    parameter_count=361_088,
    modified_unix=1_700_000_000.0,
)


def test_tags_get_latest_only_when_untagged() -> None:
    assert tagged("vllama-demo") == "vllama-demo:latest"
    assert tagged("qwen2.5:0.5b") == "qwen2.5:0.5b"
    assert tagged("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct:latest"
    assert tagged("localhost:5000/x") == "localhost:5000/x:latest"


def test_tags_entry_has_what_open_webui_and_copilot_read() -> None:
    entry = tags_entry(Card(), LLAMA, "vllama-demo")
    assert entry["name"] == entry["model"] == "vllama-demo:latest"
    assert datetime.fromisoformat(entry["modified_at"]).timestamp() == 1_700_000_000.0
    assert entry["size"] == 724_288
    assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"])
    assert entry["details"] == {
        "parent_model": "",
        "format": "safetensors",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "361.09K",
        "quantization_level": "BF16",
    }


def test_digest_is_stable_and_tells_models_apart() -> None:
    assert digest(Card(), LLAMA) == digest(Card(created=1), LLAMA)  # restarts do not change it
    assert digest(Card(), LLAMA) != digest(Card(id="other"), LLAMA)


def test_show_has_model_info_context_length_capabilities_and_parameters() -> None:
    show = show_response(Card(), LLAMA, "demo")
    info = show["model_info"]
    assert info["general.architecture"] == "llama"
    assert info["llama.context_length"] == 512
    assert info["general.parameter_count"] == 361_088
    assert info["general.basename"] == "demo"
    assert info["llama.embedding_length"] == 128
    assert show["capabilities"] == ["completion", "tools"]
    # Continue parses `^(\S+)\s+((?:".*")|\S+)$` per line.
    params = dict(
        re.match(r"^(\S+)\s+((?:\".*\")|\S+)$", line).groups()  # type: ignore[union-attr]
        for line in show["parameters"].splitlines()
    )
    assert params == {
        "num_ctx": "512",
        "temperature": "0.6",
        "top_p": "0.9",
        "repeat_penalty": "1.1",
    }
    assert show["template"] == LLAMA.chat_template
    assert "FROM /models/vllama-demo" in show["modelfile"]
    assert datetime.fromisoformat(show["modified_at"])


def test_show_without_any_files_still_has_every_key_clients_require() -> None:
    card = Card(root=None, max_model_len=None, capabilities=frozenset())
    show: dict[str, Any] = show_response(card, None, "x")
    assert show["model_info"]["general.architecture"] == "unknown"
    assert show["capabilities"] == ["completion"]
    for key in ("details", "parameters", "template", "modified_at", "license", "modelfile"):
        assert key in show


def test_ps_entry_expires_far_in_the_future_with_context_length() -> None:
    entry = ps_entry(Card(), LLAMA, "vllama-demo")
    assert entry["name"] == "vllama-demo:latest"
    assert datetime.fromisoformat(entry["expires_at"]).year >= 2999
    assert entry["context_length"] == 512
    assert entry["size_vram"] == entry["size"] == 724_288


def test_human_counts() -> None:
    assert human_count(7_615_616_512) == "7.6B"
    assert human_count(22_713_728) == "22.71M"
    assert human_count(999) == "999"


def test_quantization_falls_back_to_the_stored_weights_dtype() -> None:
    files = ModelFiles(config={"model_type": "bert"}, weight_dtype="F32")
    assert tags_entry(Card(), files, "e")["details"]["quantization_level"] == "F32"
    quantized = ModelFiles(config={"quantization_config": {"quant_method": "awq"}})
    assert tags_entry(Card(), quantized, "q")["details"]["quantization_level"] == "AWQ"


def test_ps_entry_of_an_on_demand_engine() -> None:
    entry = ps_entry(
        Card(), LLAMA, "org/a", expires_unix=1_800_000_000.0, size=2_600_000_000, size_vram=0
    )
    assert entry["expires_at"] == "2027-01-15T08:00:00.000000+00:00"
    assert entry["size"] == 2_600_000_000 and entry["size_vram"] == 0
