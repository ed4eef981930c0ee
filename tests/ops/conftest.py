"""Shared helpers for tests/ops: repo paths, required system binaries, real daemons.

`binary(name)` fails (never skips) when a Debian package is missing, naming the script that
installs it. `run_daemon(...)` starts a real server on 127.0.0.1 (tests.procs) and stops it.
`stats_chat_engine` is a chat engine that exports vLLM's Prometheus metrics.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import procs
from tests.engines import Engine
from tests.procs import REPO

MONITORING = REPO / "monitoring"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def binary(name: str) -> str:
    """Absolute path of a system binary the ops tests need; fail with the fix if absent."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/install-system-deps.sh", pytrace=False)
    return path


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output as text."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@contextlib.contextmanager
def run_daemon(cmd: list[str], ready_url: str, log: Path, timeout: float = 30) -> Iterator[None]:
    """Start a real server, wait until `ready_url` answers 200, stop it afterwards."""
    with procs.running(
        procs.start(Path(cmd[0]).name, cmd, log), lambda: procs.http_ok(ready_url), timeout, 10
    ):
        yield


def has_vllm_metrics(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            return b"vllm:num_requests_running" in resp.read()
    except OSError:
        return False


@pytest.fixture(scope="session")
def stats_chat_engine(chat_engine: Engine) -> Engine:
    """The session's chat engine, checked to export vLLM's Prometheus metrics (vLLM 0.32
    exports none when started with --disable-log-stats, which tests/engines.py avoids)."""
    assert has_vllm_metrics(chat_engine.url), f"{chat_engine.url}/metrics has no vllm:* metrics"
    return chat_engine
