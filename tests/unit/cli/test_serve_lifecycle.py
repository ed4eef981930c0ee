"""`vllama serve` around engines that misbehave, in seconds: `engine_python` points at a
small script instead of a vLLM interpreter (the real engine is in
tests/integration/test_supervisor.py). An engine that dies while loading ends serve with
exit code 3 and its log; SIGTERM while loading stops the engine and exits 0."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest

from tests.procs import wait_for
from tests.unit.cli.serve_proc import Serve, port_free, start_serve
from vllama.cli.progress import LoadProgress
from vllama.engine.supervisor import group_alive

pytestmark = pytest.mark.timeout(90)


def serve(tmp: Path, engine_script: str) -> Serve:
    fake = tmp / "fake-python"
    fake.write_text(f"#!/bin/sh\n{engine_script}\n")
    fake.chmod(0o755)
    env = {"VLLAMA_ENGINE_PYTHON": str(fake), "VLLAMA_ENGINE_GRACE_S": "2"}
    return start_serve(["--model", str(tmp)], tmp, env=env)


def test_engine_dying_while_loading_exits_3_with_its_log(tmp_path: Path) -> None:
    proc = serve(tmp_path, 'echo "ValueError: no such model $@"; exit 1')
    code, out = proc.popen.wait(60), proc.text()
    assert code == 3, out
    assert "exited with code 1 while loading" in out
    assert "ValueError: no such model -m vllm.entrypoints.openai.api_server" in out  # log tail
    assert port_free(proc.port)


def sleeping_engine_pgid(parent: int) -> int | None:
    """The process group of `parent`'s `sleep 300` engine (ours only: other test runs on
    this machine may sleep the same way)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
            if cmd.startswith(b"sleep\x00300") and ppid == parent:
                return os.getpgid(int(entry.name))
    return None


def test_sigterm_while_loading_stops_the_engine(tmp_path: Path) -> None:
    proc = serve(tmp_path, "echo loading; exec sleep 300")
    engine_pgid = wait_for(
        lambda: sleeping_engine_pgid(proc.pid), "the engine to start", 60, interval=0.1
    )
    proc.popen.send_signal(signal.SIGTERM)
    code, out = proc.popen.wait(30), proc.text()
    assert code == 0, out
    assert "stopping engines" in out
    assert not group_alive(engine_pgid)
    assert port_free(proc.port)


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
