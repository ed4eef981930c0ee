"""`vllama plan`: the declaration from the config's [plan], a TOML or JSON file or stdin;
a table for people, JSON for generators; a declaration that cannot be laid out is a usage
error that says why; `vllama serve` fronts the planned engines."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from vllama.cli.main import main
from vllama.cli.plan_cmd import with_planned_engines
from vllama.config import Settings

PLAN_TOML = """
port = 11434

[plan]
gpus = 8
engine_host = "0.0.0.0"
address = "10.0.0.11"

[[plan.engines]]
model = "Qwen/Qwen2.5-72B-Instruct"
served_name = "qwen2.5:72b"
name = "big"
tensor_parallel_size = 4

[[plan.engines]]
model = "Qwen/Qwen2.5-7B-Instruct"
served_name = "qwen2.5:7b"
name = "small"
replicas = "fill"
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "none"))
    path = tmp_path / "vllama.toml"
    path.write_text(PLAN_TOML)
    return path


def test_table_from_the_config(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "8 GPU(s): 0-7" in out
    assert any(line.split()[:3] == ["big", "qwen2.5:72b", "0-3"] for line in out.splitlines())
    assert "small-3" in out
    assert "CUDA_VISIBLE_DEVICES=0,1,2,3 vllama engine --model Qwen/Qwen2.5-72B-Instruct" in out
    assert "Prometheus targets: 10.0.0.11:8001" in out


def test_json_from_a_json_file_and_stdin(
    tmp_path: Path,
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    decl = {"gpus": 2, "engines": [{"model": "org/m", "name": "m", "replicas": "fill"}]}
    path = tmp_path / "decl.json"
    path.write_text(json.dumps(decl))
    assert main(["plan", "--file", str(path), "--json", "--address", "gpu-01"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in data["engines"]] == ["m-0", "m-1"]
    assert data["engines"][1]["env"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert data["prometheus_targets"][0]["targets"] == ["gpu-01:8001"]

    monkeypatch.setattr("sys.stdin", io.StringIO(PLAN_TOML))
    assert main(["plan", "--file", "-", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in data["engines"]][:2] == ["big", "small-0"]


def test_no_plan_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "none"))
    assert main(["plan"]) == 2
    assert "no [plan] in the configuration" in capsys.readouterr().err


def test_impossible_plan_is_a_usage_error_that_says_why(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('gpus = 4\n[[engines]]\nmodel = "m"\ntensor_parallel_size = 8\n')
    assert main(["plan", "--file", str(path)]) == 2
    assert "needs 8 GPUs for one engine but the host declares 4" in capsys.readouterr().err
    path.write_text('gpus = 4\n[[engines]]\nmodel = "m"\nreplicas = 0\n')
    assert main(["plan", "--file", str(path)]) == 2
    assert "replicas must be 1 or more" in capsys.readouterr().err
    path.write_text('{"gpus": 4, "engines": [')
    assert main(["plan", "--file", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_serve_fronts_the_planned_engines_once() -> None:
    settings = Settings.model_validate(
        {
            "engines": [{"url": "http://127.0.0.1:8001"}],
            "plan": {"gpus": 2, "engines": [{"model": "org/m", "replicas": 2}]},
        }
    )
    with_planned_engines(settings)
    assert [e.url for e in settings.engines] == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    with_planned_engines(settings)
    assert len(settings.engines) == 2
