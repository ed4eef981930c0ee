"""Processes tests start, one way: start on 127.0.0.1 with the output in a log file, wait
until ready (`wait_for`, the one poll-with-a-deadline of the test suites), stop by process
group, and show the log's tail when something goes wrong.

`await_for` is `wait_for` for code that runs in an event loop.

`instant_upstream` (the stand-in engine of tests/perf/instant_upstream.py) and
`vllama_serve` (the façade as operators run it) are started here for every suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from vllama.engine.supervisor import http_ok

REPO = Path(__file__).resolve().parents[1]
LOGS = REPO / ".cache" / "logs"

T = TypeVar("T")
P = TypeVar("P", bound="Proc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessExited(RuntimeError):
    """The process a wait depended on exited before the condition held."""


def wait_for(
    check: Callable[[], T],
    what: str,
    timeout: float,
    *,
    interval: float = 0.05,
    proc: Proc | None = None,
    errors: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll `check()` until it returns something truthy, and return that.

    Raises TimeoutError after `timeout` s (naming `what` and the last value or error), and
    ProcessExited at once when `proc` exits first. Exceptions of the `errors` types mean
    "not yet"; any other propagates.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = value = check()
            if value:
                return value
        except errors as exc:
            last = exc
        if proc is not None and proc.popen.poll() is not None:
            raise ProcessExited(f"{what}: {proc.name} exited with {proc.popen.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)


async def await_for(
    check: Callable[[], T], what: str, timeout: float, *, interval: float = 0.02
) -> T:
    """`wait_for` inside an event loop: polls without blocking it (the code under test
    runs in the same loop)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s (last: {value!r})")
        await asyncio.sleep(interval)
    return value


@dataclass
class Proc:
    """A started process: its own process group, its output in `log`."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""  # its base URL, when it serves HTTP

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, ready: str | Callable[[], object], timeout: float = 120.0) -> None:
        """Until `ready()` is truthy (a string: a path under `url` answers 200); a failure
        says why and shows the log's tail."""
        check = (lambda: http_ok(self.url + ready)) if isinstance(ready, str) else ready
        try:
            wait_for(check, f"{self.name} ready", timeout, interval=0.1, proc=self)
        except (ProcessExited, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; log {self.log}:\n{self.tail()}") from None

    def _signal_group(self, sig: signal.Signals, pgids: Iterable[int] = ()) -> None:
        for pgid in (self.popen.pid, *pgids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)

    def stop(self, grace: float = 15.0, stragglers: Callable[[], Iterable[int]] = tuple) -> None:
        """SIGTERM the process group; after `grace` s SIGKILL it and the groups that
        `stragglers()` names (children that started sessions of their own)."""
        if self.popen.poll() is not None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL, stragglers())
            self.popen.wait(10)

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash would."""
        self._signal_group(signal.SIGKILL)
        self.popen.wait(10)


def start(
    name: str,
    cmd: Sequence[str],
    log: Path,
    *,
    url: str = "",
    env: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path = REPO,
    kind: type[P] = Proc,  # type: ignore[assignment]
) -> P:
    """Start `cmd` in a process group of its own, stdout and stderr into `log`. `env`
    adds to (or overrides) this process's environment; `environ` replaces it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**(os.environ if environ is None else environ), **(env or {})},
            cwd=str(cwd),
            start_new_session=True,
        )
    return kind(name, popen, log, url)


@contextlib.contextmanager
def running(
    proc: P, ready: str | Callable[[], object], timeout: float = 120.0, grace: float = 15.0
) -> Iterator[P]:
    """Wait until `proc` is ready, yield it, and stop it however the block ends."""
    try:
        proc.wait_ready(ready, timeout)
        yield proc
    finally:
        proc.stop(grace)


def instant_upstream(
    chunks: int = 16,
    break_after: int | None = None,
    interval_ms: float = 0.0,
    *,
    request_metrics_ms: float | None = None,
    port: int | None = None,
    logs: Path = LOGS,
    kind: type[P] = Proc,  # type: ignore[assignment]
) -> P:
    """The stand-in engine (tests/perf/instant_upstream.py); ready at `/health`."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "tests.perf.instant_upstream", "--port", str(port)]
    cmd += ["--chunks", str(chunks), "--interval-ms", str(interval_ms)]
    if break_after is not None:
        cmd += ["--break-after", str(break_after)]
    if request_metrics_ms is not None:  # answers carry vLLM's per-request timings
        cmd += ["--request-metrics", str(request_metrics_ms)]
    url = f"http://127.0.0.1:{port}"
    return start("instant-upstream", cmd, logs / f"instant-upstream-{port}.log", url=url, kind=kind)


def upstream_stats(url: str) -> dict[str, float]:
    """The instant upstream's counters: requests, aborted streams, its CPU seconds."""
    with urllib.request.urlopen(url + "/_stats", timeout=5) as resp:
        return dict(json.loads(resp.read()))


def vllama_serve(
    args: Sequence[str],
    log: Path,
    *,
    name: str = "vllama-serve",
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
    kind: type[P] = Proc,  # type: ignore[assignment]
) -> P:
    """`vllama serve ARGS --port N` as operators run it; ready at `/health`. Runs the
    vllama that `import vllama` finds (PYTHONPATH in `env` picks another checkout's)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "vllama.cli.main", "serve", "--port", str(port), *args]
    return start(name, cmd, log, url=f"http://127.0.0.1:{port}", env=env, cwd=cwd, kind=kind)
