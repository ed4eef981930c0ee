"""Settings precedence: flags > env > ./vllama.toml > user file > defaults, with sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllama.config import ConfigError, load_plan_file, load_settings, parse_plan


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    xdg = tmp_path / "xdg"
    (xdg / "vllama").mkdir(parents=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    return xdg / "vllama" / "config.toml", cwd


def test_each_layer_overrides_the_one_below(dirs: tuple[Path, Path]) -> None:
    user, cwd = dirs
    user.write_text('port = 1001\nhost = "10.0.0.1"\nlog_level = "DEBUG"\nretries = 7\n')
    (cwd / "vllama.toml").write_text('port = 1002\nhost = "10.0.0.2"\nlog_level = "WARNING"\n')
    env = {"VLLAMA_PORT": "1003", "VLLAMA_HOST": "10.0.0.3"}
    settings, sources = load_settings({"port": 1004, "host": None}, environ=env, cwd=cwd)
    assert settings.port == 1004 and sources["port"] == "flag"
    assert settings.host == "10.0.0.3" and sources["host"] == "env VLLAMA_HOST"
    assert settings.log_level == "WARNING" and sources["log_level"] == f"file {cwd / 'vllama.toml'}"
    assert settings.retries == 7 and sources["retries"] == f"file {user}"
    assert settings.drain_timeout_s == 30.0 and sources["drain_timeout_s"] == "default"


def test_config_flag_replaces_the_local_file(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    _, cwd = dirs
    (cwd / "vllama.toml").write_text("port = 1002\n")
    other = tmp_path / "other.toml"
    other.write_text("port = 2002\n")
    settings, sources = load_settings({}, environ={}, cwd=cwd, config_file=other)
    assert settings.port == 2002 and sources["port"] == f"file {other}"
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({}, environ={}, cwd=cwd, config_file=tmp_path / "missing.toml")


def test_env_lists_and_tables(dirs: tuple[Path, Path]) -> None:
    _, cwd = dirs
    env = {
        "VLLAMA_ENGINES": "http://a:1/, http://b:2",
        "VLLAMA_ALIASES": "small=org/small,big=org/big",
        "VLLAMA_API_KEYS": "k1,k2",
    }
    settings, _ = load_settings({}, environ=env, cwd=cwd)
    assert [e.url for e in settings.engines] == ["http://a:1", "http://b:2"]
    assert settings.resolve_alias("small:latest") == "org/small"
    assert [k.key for k in settings.api_keys] == ["k1", "k2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = 99999\n", "port"),
        ("nonsense = 1\n", "unknown setting 'nonsense'"),
        ("port = \n", "not valid TOML"),
        ('[[engines]]\nurl = "ftp://x"\n', "must start with http"),
    ],
)
def test_bad_files_name_the_problem(dirs: tuple[Path, Path], text: str, message: str) -> None:
    _, cwd = dirs
    (cwd / "vllama.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings({}, environ={}, cwd=cwd)


def test_plan_from_env_json_and_from_a_plan_file(tmp_path: Path) -> None:
    decl = '{"gpus": 4, "engines": [{"model": "org/m", "tensor_parallel_size": 2, "replicas": 2}]}'
    settings, sources = load_settings({}, environ={"VLLAMA_PLAN": decl}, cwd=tmp_path)
    assert settings.plan is not None and settings.plan.engines[0].tensor_parallel_size == 2
    assert sources["plan"] == "env VLLAMA_PLAN"
    path = tmp_path / "host.toml"
    path.write_text('[plan]\ngpus = [0, 1]\n[[plan.engines]]\nmodel = "m"\nargs = "--seed 0"\n')
    plan = load_plan_file(path)
    assert plan.gpus == [0, 1] and plan.engines[0].args == ["--seed", "0"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"gpus": [0, 0], "engines": []}', "lists a device twice"),
        ('{"gpus": -1}', r"a count \(0 or more\)"),
        ('{"engines": [{"model": "m", "name": "Big_One"}]}', "lower-case letters, digits"),
        ('{"engines": [{"model": "m", "replicas": "all"}]}', "replicas"),
        ('{"engines": [{"model": "m", "tp": 2}]}', "engines.0.tp: Extra inputs"),
        ("gpus = ", "neither JSON nor valid TOML"),
    ],
)
def test_bad_plans_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_plan(text, "host.json")
