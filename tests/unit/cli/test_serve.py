"""`vllama serve` before anything starts: the one port check (also doctor's), the engines
to start (config models, CLI engine flags, the demo), and the refusals that come before
any engine or socket is touched. (The running façade: tests/integration/test_cli_serve.py;
engines that misbehave: test_serve_lifecycle.py.)"""

from __future__ import annotations

import argparse
import errno
import socket
from pathlib import Path

import pytest

from tests.procs import free_port
from vllama.cli.output import FAILED, USAGE, CliError
from vllama.cli.serve import bind_error, launches, run
from vllama.config import Settings
from vllama.demo import DEMO_MODEL_NAME, MARKER_FILE


@pytest.fixture(autouse=True)
def _no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` configures the process's logging first; not in a shared test process."""
    monkeypatch.setattr("vllama.cli.serve._configure_logging", lambda settings: None)


def args(**given: object) -> argparse.Namespace:
    values: dict[str, object] = {"demo": False, "engine_extra": [], "max_model_len": None}
    return argparse.Namespace(**{**values, **given})


def test_bind_error_tells_a_free_port_from_a_taken_one() -> None:
    assert bind_error("127.0.0.1", free_port()) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        exc = bind_error("127.0.0.1", taken.getsockname()[1])
    assert isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE


def test_nothing_to_serve_is_a_usage_error() -> None:
    """Without on-demand engines (with them, `vllama serve` alone serves pulled models)."""
    with pytest.raises(CliError) as exc:
        run(args(), Settings(on_demand=False), {})
    assert exc.value.code == USAGE and "--engine URL" in str(exc.value)


def test_worker_processes_serve_nothing_on_demand(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine one worker started would be unknown to the others: workers > 1 with
    nothing to front is refused, on-demand engines or not."""
    monkeypatch.setattr("vllama.cli.serve._check_port_free", lambda host, port: None)
    monkeypatch.setattr("vllama.cli.serve._serve_workers", lambda settings: pytest.fail("served"))
    with pytest.raises(CliError) as exc:
        run(args(), Settings(on_demand=True, workers=2, engine_python="python3"), {})
    assert exc.value.code == USAGE and "nothing to serve" in str(exc.value)


def test_a_taken_port_stops_serve_before_any_engine_starts(tmp_path: Path) -> None:
    started = tmp_path / "engine-started"
    engine = tmp_path / "engine"
    engine.write_text(f"#!/bin/sh\ntouch {started}\n")
    engine.chmod(0o755)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = Settings.model_validate(
            {
                "port": taken.getsockname()[1],
                "models": [{"model": "org/m"}],
                "engine_python": str(engine),
                "log_dir": tmp_path,
            }
        )
        with pytest.raises(CliError) as exc:
            run(args(), settings, {})
    assert exc.value.code == FAILED and "Stop it or pick another --port" in str(exc.value)
    assert not started.exists()


def test_engine_flags_from_the_command_line_go_to_every_engine() -> None:
    settings = Settings.model_validate(
        {"models": [{"model": "org/a", "engine_args": ["--seed", "1"]}, {"model": "org/b"}]}
    )
    todo = launches(args(max_model_len="512", engine_extra=["--enforce-eager"]), settings)
    assert [(launch.model, launch.engine_args, demo) for launch, demo in todo] == [
        ("org/a", ["--seed", "1", "--max-model-len", "512", "--enforce-eager"], False),
        ("org/b", ["--max-model-len", "512", "--enforce-eager"], False),
    ]


def test_the_demo_is_built_next_to_the_cache_and_served_by_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vllama.engine import demo_model

    built: list[Path] = []

    def build(path: Path) -> Path:  # the real build takes torch; its output is checked elsewhere
        built.append(path)
        (path / MARKER_FILE).parent.mkdir(parents=True, exist_ok=True)
        return path

    monkeypatch.setattr(demo_model, "build_demo_model", build)
    settings = Settings.model_validate({"cache_dir": tmp_path})
    [(launch, demo)] = launches(args(demo=True), settings)
    assert demo and built == [tmp_path / DEMO_MODEL_NAME]
    assert (launch.model, launch.served_name) == (str(tmp_path / DEMO_MODEL_NAME), DEMO_MODEL_NAME)
