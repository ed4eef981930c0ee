"""`vllama serve` as a real subprocess for the CLI and supervisor tests: its own config dir
and working dir (no stray vllama.toml), output to a file, and helpers to find its engine
processes and to check that nothing is left behind."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests import procs


class Serve(procs.Proc):
    @property
    def proc(self) -> subprocess.Popen[bytes]:  # what the tests signal and wait for
        return self.popen

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[int]:
        """Direct children (the supervised engines' group leaders)."""
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stat = (entry / "stat").read_text()
                    if int(stat[stat.rfind(")") + 2 :].split()[1]) == self.pid:
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


def start_serve(args: list[str], tmp: Path, *, env: dict[str, str] | None = None) -> Serve:
    """Started, not waited for."""
    env = {
        "XDG_CONFIG_HOME": str(tmp / "xdg"),
        "VLLAMA_LOG_DIR": str(tmp / "logs"),
        "VLLAMA_LOG_FORMAT": "text",
        **(env or {}),
    }
    return procs.vllama_serve(args, tmp / "serve.out", env=env, cwd=tmp, kind=Serve)


@contextlib.contextmanager
def run_serve(
    args: list[str], tmp: Path, *, env: dict[str, str] | None = None, ready_timeout: float = 60
) -> Iterator[Serve]:
    serve = start_serve(args, tmp, env=env)
    try:
        serve.wait_ready("/health", ready_timeout)
        yield serve
    finally:  # a test that failed early: stop everything it started
        serve.stop(grace=60, stragglers=serve.children)
