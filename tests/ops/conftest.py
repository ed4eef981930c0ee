"""Shared helpers for tests/ops: repo paths, required system binaries, real daemons.

`binary(name)` fails (never skips) when a Debian package is missing, naming the script that
installs it. `run_daemon(...)` starts a real server on 127.0.0.1 and stops it by its own pid.
`stats_chat_engine` is a chat engine that exports vLLM's Prometheus metrics.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.engines import Engine

REPO = Path(__file__).resolve().parents[2]
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


def wait_for(
    check: Callable[[], bool], what: str, timeout: float, proc: subprocess.Popen[bytes] | None
) -> None:
    """Poll `check` until it is true; fail after `timeout` s or when `proc` exits."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(0.1)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def run_daemon(cmd: list[str], ready_url: str, log: Path, timeout: float = 30) -> Iterator[None]:
    """Start a real server, wait until `ready_url` answers 200, stop it (by pid) afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for(lambda: http_ok(ready_url), cmd[0], timeout, proc)
        except (RuntimeError, TimeoutError) as exc:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{exc}; log {log}:\n{tail}") from exc
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


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
