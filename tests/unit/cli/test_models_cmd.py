"""`vllama pull` on a path: compose's pull step runs on every engine's model, a local
directory included; it is left alone, and a path with no model is an error that says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vllama.cli.main import main


def test_pull_of_a_local_model_directory_downloads_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any hub access would fail: the endpoint is a closed port.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("VLLAMA_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "demo"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert main(["pull", str(model)]) == 0
    assert "nothing to pull" in capsys.readouterr().out
    assert main(["pull", "--json", str(model)]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(model)
    assert not (tmp_path / "cache").exists()


def test_pull_of_a_path_without_a_model_fails_naming_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert main(["pull", str(tmp_path / "missing")]) != 0
    err = capsys.readouterr().err
    assert "no model directory there" in err and "repo id" in err
