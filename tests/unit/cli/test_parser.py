"""Argument parsing: engine flags pass through, `--` hands the rest to the engines, serve's
options become settings flags, and usage errors exit 2 with a reason."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vllama.cli.main import build_parser, main, parse
from vllama.cli.serve import engine_args, prepare


def _serve(argv: list[str], extra: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(["serve", *argv])
    args.engine_extra = extra or []
    prepare(args)
    return args


def test_known_engine_flags_pass_through_in_vllm_spelling() -> None:
    args = _serve(
        [
            "--model", "Qwen/Qwen2.5-0.5B-Instruct",
            "--gpu-memory-utilization", "0.8",
            "--max-model-len", "4096",
            "--tensor-parallel-size", "2",
            "--enable-prefix-caching",
            "--max-num-batched-tokens", "8192",
            "--tool-call-parser", "hermes",
            "--enable-auto-tool-choice",
            "--reasoning-parser", "deepseek_r1",
        ],
        extra=["--seed", "0"],
    )  # fmt: skip
    assert engine_args(args) == [
        "--gpu-memory-utilization", "0.8",
        "--max-model-len", "4096",
        "--tensor-parallel-size", "2",
        "--enable-prefix-caching",
        "--max-num-batched-tokens", "8192",
        "--tool-call-parser", "hermes",
        "--enable-auto-tool-choice",
        "--reasoning-parser", "deepseek_r1",
        "--seed", "0",
    ]  # fmt: skip


def test_serve_options_become_settings_flags() -> None:
    args = _serve(
        [
            "--engine",
            "http://a:1",
            "--engine",
            "http://b:2",
            "--model",
            "m1",
            "--model",
            "m2",
            "--log-format",
            "text",
            "--port",
            "9",
        ]
    )
    assert args.settings_flags == {
        "log_format": "text",
        "engines": [{"url": "http://a:1"}, {"url": "http://b:2"}],
        "models": [{"model": "m1"}, {"model": "m2"}],
    }
    assert args.port == 9


def test_nothing_given_means_no_flags() -> None:
    args = _serve([])
    assert args.settings_flags == {"log_format": None}
    assert engine_args(args) == []


@pytest.mark.parametrize(
    "argv",
    [["serve", "--port", "x"], ["nope"], ["list", "--bogus"], ["serve", "--log-format", "xml"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: vllama" in capsys.readouterr().err


def test_run_takes_prompt_words_before_and_after_its_options() -> None:
    args = parse(["run", "org/m", "why", "--keepalive", "10m", "is the sky", "--port", "1", "blue"])
    assert args.model == "org/m" and args.keepalive == "10m" and args.port == 1
    assert args.prompt == ["why", "is the sky", "blue"]
    assert parse(["run", "org/m"]).prompt == []


def test_unknown_options_stay_usage_errors_after_a_prompt(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(["run", "org/m", "hi", "--bogus"])
    assert exc.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_double_dash_only_for_serve(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--", "--seed", "0"]) == 2
    assert "only `serve`" in capsys.readouterr().err


def test_serve_with_nothing_to_serve_says_what_to_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without on-demand engines (where vLLM is installed, `vllama serve` alone serves the
    pulled models, as `ollama serve` does)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("VLLAMA_ON_DEMAND", "false")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "--engine URL" in err and "--demo" in err


@pytest.mark.parametrize("argv", [["serve", "--demo"], ["serve", "--model", "org/m"]])
def test_serve_refuses_workers_with_supervised_engines(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("VLLAMA_WORKERS", "3")
    monkeypatch.setenv("VLLAMA_CACHE_DIR", str(tmp_path / "cache"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "workers = 3 needs engines that run on their own" in err
    assert "vllama engine" in err and "workers = 1" in err
    assert not (tmp_path / "cache").exists()  # refused before building or starting anything


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from vllama import __version__

    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"vllama {__version__}"


def test_ps_without_a_running_facade_exits_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.procs import free_port

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert main(["ps", "--port", str(free_port())]) == 4
    assert "vllama serve" in capsys.readouterr().err
