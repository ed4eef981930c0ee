"""`vllama serve` around engines that misbehave, in seconds: `engine_python` points at a
small script instead of a vLLM interpreter (the real engine is in
tests/integration/test_supervisor.py). An engine that dies while loading ends serve with
exit code 3 and its log; SIGTERM while loading stops the engine and exits 0."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.engines import free_port
from tests.unit.cli.serve_proc import port_free
from vllama.cli.progress import LoadProgress
from vllama.engine.supervisor import group_alive

pytestmark = pytest.mark.timeout(90)


def serve(tmp: Path, engine_script: str) -> tuple[subprocess.Popen[str], int]:
    fake = tmp / "fake-python"
    fake.write_text(f"#!/bin/sh\n{engine_script}\n")
    fake.chmod(0o755)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllama.cli.main",
            "serve",
            "--model",
            str(tmp),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp,
        env={
            **os.environ,
            "XDG_CONFIG_HOME": str(tmp / "xdg"),
            "VLLAMA_ENGINE_PYTHON": str(fake),
            "VLLAMA_LOG_DIR": str(tmp / "logs"),
            "VLLAMA_ENGINE_GRACE_S": "2",
        },
    )
    return proc, port


def test_engine_dying_while_loading_exits_3_with_its_log(tmp_path: Path) -> None:
    proc, port = serve(tmp_path, 'echo "ValueError: no such model $@"; exit 1')
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3, out
    assert "exited with code 1 while loading" in out
    assert "ValueError: no such model -m vllm.entrypoints.openai.api_server" in out  # log tail
    assert port_free(port)


def test_sigterm_while_loading_stops_the_engine(tmp_path: Path) -> None:
    proc, port = serve(tmp_path, "echo loading; exec sleep 300")
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    engine_pgid = None
    while engine_pgid is None:
        assert time.monotonic() < deadline, "the engine never started"
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmd = (entry / "cmdline").read_bytes()
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                # Ours only: other test runs on this machine may sleep the same way.
                ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
                if cmd.startswith(b"sleep\x00300") and ppid == proc.pid:
                    engine_pgid = os.getpgid(int(entry.name))
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "stopping engines" in out
    assert not group_alive(engine_pgid)
    assert port_free(port)


def test_progress_spinner_on_a_tty_and_lines_otherwise() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    spinner = LoadProgress("loading 1 engine(s)", tty)
    spinner.update(75.0, 0, 1)
    spinner.done("ready")
    assert tty.getvalue().startswith("\r") and "(0/1 ready, 1m15s)" in tty.getvalue()
    plain = io.StringIO()
    lines = LoadProgress("loading 2 engine(s)", plain, plain_every_s=1e9)
    lines.update(3.0, 1, 2)
    lines.update(4.0, 1, 2)  # throttled: one line per interval
    assert plain.getvalue() == "vllama: loading 2 engine(s): 1/2 ready after 3s\n"
