"""`vllama config`: the example file loads, covers every setting, and its commented-out
tables load too once uncommented; `--show` reports values with their sources."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vllama.cli.config_cmd import DESCRIPTIONS, example_config
from vllama.cli.main import main
from vllama.config import Settings, load_settings

TABLES = {"engines", "models", "plan", "aliases", "api_keys", "admin_keys"}


def test_example_mentions_every_setting() -> None:
    text = example_config()
    for name in Settings.model_fields:
        assert re.search(rf"^#?\[*{name}\b", text, re.M), name
    assert set(DESCRIPTIONS) | TABLES == set(Settings.model_fields)


def test_example_loads_to_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "vllama.toml"
    path.write_text(example_config())
    settings, sources = load_settings({}, environ={}, config_file=path)
    defaults = Settings.model_validate({})
    assert settings.model_dump(exclude={"aliases"}) == defaults.model_dump(exclude={"aliases"})
    assert settings.resolve_alias("qwen2.5:0.5b") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert sources["port"] == f"file {path}"


def test_example_with_everything_uncommented_loads(tmp_path: Path) -> None:
    text = "\n".join(
        line[1:] if line.startswith("#") and not line.startswith("# ") and len(line) > 1 else line
        for line in example_config().splitlines()
    )
    path = tmp_path / "vllama.toml"
    path.write_text(text)
    settings, _ = load_settings({}, environ={}, config_file=path)
    assert settings.engines[0].url == "http://127.0.0.1:8000"
    assert settings.models[0].engine_args[:2] == ["--max-model-len", "8192"]
    assert settings.api_keys[0].name == "team-a" and settings.api_keys[0].priority == 0
    assert settings.rate_limit_per_minute == 600 and settings.cache_dir is not None
    assert settings.plan is not None and settings.plan.engines[1].replicas == "fill"


def test_config_show_json_has_sources_and_hides_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "none"))
    (tmp_path / "vllama.toml").write_text('[[api_keys]]\nkey = "s3cret"\nname = "a"\n')
    monkeypatch.setenv("VLLAMA_LOG_LEVEL", "DEBUG")
    assert main(["config", "--show", "--json", "--port", "1234"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    data = json.loads(out)
    assert data["settings"]["port"] == 1234 and data["sources"]["port"] == "flag"
    assert data["sources"]["log_level"] == "env VLLAMA_LOG_LEVEL"
    assert data["sources"]["api_keys"].startswith("file ")
    assert data["settings"]["api_keys"] == [
        {"key": "***", "name": "a", "max_concurrency": None, "priority": None}
    ]


def test_bad_config_exits_2_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vllama.toml").write_text("port = 0\n")
    assert main(["config", "--show"]) == 2
    assert "port" in capsys.readouterr().err
