"""Run `vllama serve` as a real subprocess for the CLI and supervisor tests: its own
config dir and working dir (no stray vllama.toml), output to a file, and helpers to find
its engine processes and to check that nothing is left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.engines import free_port, http_ok


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    output: Path

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def children(self) -> list[int]:
        """Direct children (the supervised engines' group leaders)."""
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stat = (entry / "stat").read_text()
                    if int(stat[stat.rfind(")") + 2 :].split()[1]) == self.proc.pid:
                        out.append(int(entry.name))
        return out


def port_free(port: int) -> bool:
    """Nothing listens there and a new server could bind it (TIME_WAIT leftovers of closed
    connections do not count: servers bind with SO_REUSEADDR)."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def run_serve(
    args: list[str], tmp: Path, *, env: dict[str, str] | None = None, ready_timeout: float = 60
) -> Iterator[Serve]:
    port = free_port()
    output = tmp / "serve.out"
    full_env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp / "xdg"),
        "VLLAMA_LOG_DIR": str(tmp / "logs"),
        "VLLAMA_LOG_FORMAT": "text",
        **(env or {}),
    }
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllama.cli.main", "serve", "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=tmp,
            start_new_session=True,
        )
    serve = Serve(proc, f"http://127.0.0.1:{port}", port, output)
    try:
        deadline = time.monotonic() + ready_timeout
        while not http_ok(f"{serve.url}/health"):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"vllama serve exited with {proc.returncode}:\n{serve.text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"vllama serve not up after {ready_timeout:.0f}s:\n{serve.text()[-3000:]}"
                )
            time.sleep(0.2)
        yield serve
    finally:
        if proc.poll() is None:  # the test failed early: stop everything it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                for pid in [proc.pid, *serve.children()]:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                proc.wait(10)
