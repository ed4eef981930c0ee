"""The supervisor with real child processes (a few-line HTTP server stands in for vLLM's
/health, so these run in seconds; tests/integration/test_supervisor.py does it with vLLM):
process groups, log files, restart with backoff, SIGKILL after the grace period."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.procs import free_port, wait_for
from vllama.engine.launch import EngineSpec
from vllama.engine.supervisor import EngineStartError, Supervisor, group_alive

pytestmark = pytest.mark.timeout(60)

# Answers /health; prints a line so the log has something; with IGNORE_TERM it ignores
# SIGTERM (as a hung engine would) and starts a grandchild in its group.
CHILD = r"""
import http.server, os, signal, subprocess, sys
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    subprocess.Popen([sys.executable, "-c", "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
if os.environ.get("FAIL"):
    print("boom: cannot load", flush=True); sys.exit(7)
print("engine up", flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def spec(port: int, **env: str) -> EngineSpec:
    return EngineSpec(
        name="fake/model", port=port, command=[sys.executable, "-c", CHILD, str(port)], env=env
    )


def test_restart_after_crash_with_backoff_then_stop(tmp_path: Path) -> None:
    restarted: list[str] = []
    sup = Supervisor(
        [spec(free_port())],
        log_dir=tmp_path,
        backoff_initial_s=0.3,
        poll_s=0.05,
        on_restart=restarted.append,
    )
    sup.start()
    try:
        progress: list[tuple[int, int]] = []
        sup.wait_ready(20, lambda _e, ready, total: progress.append((ready, total)))
        [pgid] = sup.pgids()
        assert os.getpgid(pgid) == pgid  # its own process group
        url = sup.specs[0].url
        for n in (1, 2):
            crashed = time.monotonic()
            os.killpg(sup.pgids()[0], signal.SIGKILL)

            def back(n: int = n) -> bool:
                return sup.restarts()[url] == n and sup.ready_count() == 1

            wait_for(back, f"restart {n} and ready again", 20)
            waited = time.monotonic() - crashed
            assert waited >= 0.3 * 2 ** (n - 1)  # backoff doubles: 0.3 s, then 0.6 s
        assert restarted == [url, url]
        log = sup.log_paths()[url].read_text()
        assert (
            log.splitlines().count("engine up") == 3
            and "--- vllama: starting engine fake/model" in log
        )
    finally:
        sup.stop()
    assert not any(group_alive(p) for p in sup.pgids())


def test_engine_that_fails_to_load_is_reported_with_its_log(tmp_path: Path) -> None:
    sup = Supervisor([spec(free_port(), FAIL="1")], log_dir=tmp_path, poll_s=0.05)
    sup.start()
    try:
        with pytest.raises(EngineStartError, match="exited with code 7") as err:
            sup.wait_ready(20)
        assert "boom: cannot load" in str(err.value)  # the log tail comes with it
    finally:
        sup.stop()


def test_startup_timeout_names_the_setting(tmp_path: Path) -> None:
    slow = EngineSpec(
        name="slow", port=free_port(), command=[sys.executable, "-c", "import time; time.sleep(60)"]
    )
    sup = Supervisor([slow], log_dir=tmp_path, poll_s=0.05)
    sup.start()
    try:
        with pytest.raises(EngineStartError, match="engine_startup_timeout_s"):
            sup.wait_ready(0.5)
    finally:
        sup.stop()


def test_sigkill_after_grace_leaves_nothing_behind(tmp_path: Path) -> None:
    sup = Supervisor(
        [spec(free_port(), IGNORE_TERM="1")], log_dir=tmp_path, grace_s=1.0, poll_s=0.05
    )
    sup.start()
    sup.wait_ready(20)
    [pgid] = sup.pgids()
    started = time.monotonic()
    sup.stop()
    took = time.monotonic() - started
    assert 1.0 <= took < 10
    assert not group_alive(pgid)  # leader and grandchild, both ignoring SIGTERM, are gone


def _running_with(arg: str) -> int:
    """Live processes whose command line has `arg`."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            count += arg.encode() in argv
    return count


def test_engines_added_and_removed_while_running(tmp_path: Path) -> None:
    """On-demand engines: `add` starts one (the watcher with it), `remove` stops its whole
    group for good (no restart), `memory` measures the group's resident memory."""
    sup = Supervisor([], log_dir=tmp_path / "logs", poll_s=0.05, backoff_initial_s=0.1)
    try:
        first, second = spec(free_port()), spec(free_port())
        sup.add(first)
        sup.add(second)
        wait_for(lambda: sup.status(first.url)[0] and sup.status(second.url)[0], "both ready", 20)
        assert len(sup.pgids()) == 2
        assert _running_with(str(first.port)) == 1  # started once: no orphaned twin
        memory = sup.memory(first.url)
        assert memory is not None and memory > 1_000_000  # a Python process: megabytes
        [pgid] = [p for p in sup.pgids() if sup._child(first.url).proc.pid == p]  # type: ignore[union-attr]
        sup.remove(first.url)
        assert not group_alive(pgid)
        time.sleep(0.5)  # the watcher would have restarted a crashed engine by now
        assert not group_alive(pgid) and len(sup.pgids()) == 1
        assert sup.memory(first.url) is None
        with pytest.raises(KeyError):
            sup.status(first.url)
        assert sup.status(second.url) == (True, None)
    finally:
        sup.stop()
    assert sup.pgids() == [] or not any(group_alive(p) for p in sup.pgids())
