"""`vllama engine`: the command it execs comes from engine/launch.py, flags stay a list
(JSON-valued flags survive every way of passing them), the served name is optional, and
bad input is a usage error that says what to give."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vllama.cli.engine_cmd import parse_flags, plan
from vllama.cli.main import build_parser, main
from vllama.cli.output import CliError
from vllama.config import Settings
from vllama.engine.launch import ENGINE_MODULE

JSON_VALUE = '{"temperature": 0, "top_p": 0.5}'


def _plan(argv: list[str], environ: dict[str, str], extra: list[str] | None = None) -> list[str]:
    args = build_parser().parse_args(["engine", *argv])
    args.engine_extra = extra or []
    settings = Settings.model_validate({"cache_dir": "/srv/hub"})
    return plan(args, settings, environ).command


def _flags_after_name(command: list[str]) -> list[str]:
    return command[command.index("--served-model-name") + 2 :]


def test_json_value_survives_after_the_double_dash() -> None:
    cmd = _plan(
        ["--model", "org/m", "--port", "8001"], {}, ["--override-generation-config", JSON_VALUE]
    )
    assert cmd[1:3] == ["-m", ENGINE_MODULE]
    flags = _flags_after_name(cmd)
    assert flags[flags.index("--override-generation-config") + 1] == JSON_VALUE


@pytest.mark.parametrize(
    "value",
    [
        json.dumps(["--override-generation-config", JSON_VALUE, "--seed", "0"]),
        f"--override-generation-config '{JSON_VALUE}' --seed 0",
    ],
    ids=["json-list", "shell-quoted"],
)
def test_json_value_survives_in_the_environment(value: str) -> None:
    env = {"VLLAMA_ENGINE_MODEL": "org/m", "VLLAMA_ENGINE_ARGS": value}
    flags = _flags_after_name(_plan([], env))
    assert flags[:4] == ["--override-generation-config", JSON_VALUE, "--seed", "0"]


def test_flags_file_holds_a_json_list(tmp_path: Path) -> None:
    path = tmp_path / "demo.args"
    path.write_text(json.dumps(["--override-generation-config", JSON_VALUE]))
    env = {"VLLAMA_ENGINE_MODEL": "org/m", "VLLAMA_ENGINE_ARGS_FILE": str(path)}
    flags = _flags_after_name(_plan([], env, ["--seed", "1"]))
    assert flags[:4] == ["--override-generation-config", JSON_VALUE, "--seed", "1"]


def test_environment_gives_every_option() -> None:
    env = {
        "VLLAMA_ENGINE_MODEL": "org/m",
        "VLLAMA_ENGINE_NAME": "m:7b",
        "VLLAMA_ENGINE_HOST": "0.0.0.0",
        "VLLAMA_ENGINE_PORT": "8005",
    }
    cmd = _plan([], env)
    assert cmd[3:11] == [
        "--host",
        "0.0.0.0",
        "--port",
        "8005",
        "--model",
        "org/m",
        "--served-model-name",
        "m:7b",
    ]


@pytest.mark.parametrize("name", [None, "", "  "], ids=["unset", "empty", "blank"])
def test_served_name_is_optional(name: str | None) -> None:
    env = {"VLLAMA_ENGINE_MODEL": "org/m"}
    if name is not None:
        env["VLLAMA_ENGINE_NAME"] = name
    cmd = _plan([], env)
    assert cmd[cmd.index("--served-model-name") + 1] == "org/m"


def test_engine_uses_the_one_cache_layout() -> None:
    args = build_parser().parse_args(["engine", "--model", "org/m"])
    args.engine_extra = []
    spec = plan(args, Settings.model_validate({"cache_dir": "/srv/hub"}), {})
    assert spec.env["HF_HUB_CACHE"] == "/srv/hub"
    # An operator's own HF_HUB_CACHE stays theirs.
    spec = plan(args, Settings.model_validate({"cache_dir": "/srv/hub"}), {"HF_HUB_CACHE": "/x"})
    assert "HF_HUB_CACHE" not in spec.env


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('["--seed", 0]', "JSON list of strings"),
        ("[--seed", "not a valid JSON list"),
        ('--override-generation-config \'{"a": 1}', "No closing quotation"),
    ],
)
def test_bad_flags_say_how_to_write_them(text: str, message: str) -> None:
    with pytest.raises(CliError) as err:
        parse_flags(text, "VLLAMA_ENGINE_ARGS")
    assert message in str(err.value) and err.value.code == 2


def test_missing_model_and_bad_port_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["engine", "--print"]) == 2
    assert "--model NAME_OR_PATH or VLLAMA_ENGINE_MODEL" in capsys.readouterr().err
    assert main(["engine", "--model", "m", "--port", "0", "--print"]) == 2
    assert "not a port number" in capsys.readouterr().err


def test_print_shows_what_would_run_as_json(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "vllama.cli.main", "engine", "--model", "org/m", "--print", "--",
         "--override-generation-config", JSON_VALUE],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    command = out["command"]
    assert command[command.index("--override-generation-config") + 1] == JSON_VALUE
    assert out["env"]["VLLM_NO_USAGE_STATS"] == "1"


def test_offline_engine_refuses_a_model_that_is_not_in_the_cache(tmp_path: Path) -> None:
    args = build_parser().parse_args(["engine", "--model", "org/absent"])
    args.engine_extra = []
    settings = Settings.model_validate({"cache_dir": tmp_path})
    with pytest.raises(CliError) as err:
        plan(args, settings, {"HF_HUB_OFFLINE": "1"})
    assert "not in the model cache" in str(err.value) and "vllama pull org/absent" in str(err.value)
    assert plan(args, settings, {}).command  # online, vLLM may download it itself


def test_planned_engine_comes_whole_from_the_declaration() -> None:
    args = build_parser().parse_args(["engine", "--planned", "big-1"])
    args.engine_extra = ["--seed", "0"]
    settings = Settings.model_validate(
        {
            "plan": {
                "gpus": 8,
                "engines": [
                    {
                        "model": "org/big",
                        "served_name": "big",
                        "tensor_parallel_size": 4,
                        "replicas": 2,
                    }
                ],
            }
        }
    )
    spec = plan(args, settings, {})
    cmd = spec.command
    assert cmd[cmd.index("--port") + 1] == "8002" and cmd[cmd.index("--model") + 1] == "org/big"
    flags = _flags_after_name(cmd)
    assert flags[:4] == ["--tensor-parallel-size", "4", "--seed", "0"]
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert spec.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    # The environment names it as well (systemd's env file: VLLAMA_ENGINE_PLANNED=big-0).
    args = build_parser().parse_args(["engine"])
    args.engine_extra = []
    assert (
        plan(args, settings, {"VLLAMA_ENGINE_PLANNED": "big-0"}).env["CUDA_VISIBLE_DEVICES"]
        == "0,1,2,3"
    )


def test_planned_engine_errors_name_the_choices() -> None:
    args = build_parser().parse_args(["engine", "--planned", "nope"])
    args.engine_extra = []
    settings = Settings.model_validate(
        {"plan": {"gpus": 1, "engines": [{"model": "org/m", "name": "m"}]}}
    )
    with pytest.raises(CliError, match=r"no engine 'nope' \(it has: m\)"):
        plan(args, settings, {})
    with pytest.raises(CliError, match="has no \\[plan\\]"):
        plan(args, Settings.model_validate({}), {})
    args = build_parser().parse_args(["engine", "--planned", "m", "--model", "x"])
    args.engine_extra = []
    with pytest.raises(CliError, match="not both"):
        plan(args, settings, {})


def test_an_engine_stops_gracefully_unless_told_otherwise() -> None:
    """vLLM's own default (0) aborts running requests on SIGTERM; `vllama engine` lets them
    finish for 30 s (below systemd's TimeoutStopSec and compose's stop_grace_period)."""
    flags = _flags_after_name(_plan(["--model", "org/m"], {}))
    assert flags[flags.index("--shutdown-timeout") + 1] == "30"
    own = _flags_after_name(_plan(["--model", "org/m"], {}, ["--shutdown-timeout", "0"]))
    assert own.count("--shutdown-timeout") == 1
    assert own[own.index("--shutdown-timeout") + 1] == "0"
    env = {"VLLAMA_ENGINE_MODEL": "org/m", "VLLAMA_ENGINE_ARGS": "--shutdown-timeout=5"}
    assert "--shutdown-timeout" not in _flags_after_name(_plan([], env))  # given as flag=value
