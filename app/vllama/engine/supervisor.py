"""Supervised vLLM engines: start each in its own process group, log to a rotating file,
wait until healthy, restart a crashed one with exponential backoff, stop them all.

Threads, not asyncio: the supervisor must keep working while uvicorn owns the event loop
and after it has stopped (draining, then stopping the engines).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import logging.handlers
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from vllama.engine.launch import EngineSpec

log = logging.getLogger("vllama.supervisor")

LOG_MAX_BYTES = 20 * 1024 * 1024
LOG_BACKUPS = 3
_PR_SET_PDEATHSIG = 1


class EngineStartError(Exception):
    """An engine exited or timed out while loading; the message names its log file."""


def _die_with_parent() -> None:
    """In the child: get SIGTERM if vllama itself dies (even by SIGKILL), so no engine is
    left orphaned holding a GPU. Linux only; elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is in the group. Zombies do not count: an
    orphaned engine core is reaped by init, which may take its time."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces, so split after its ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def group_rss(pgid: int) -> int:
    """Resident memory of every live process in a group, in bytes (Linux /proc)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rfind(")") + 2 :].split()
            if int(fields[2]) != pgid:
                continue
            total += int((entry / "statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


@dataclass
class _Child:
    spec: EngineSpec
    logger: logging.Logger
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready: bool = False  # passed its first health check since the last (re)start
    was_ready: bool = False  # ever served: only then is an exit a crash to restart
    restarts: int = 0
    backoff_s: float = 0.0
    restart_at: float | None = None
    failed: str | None = None  # why it could not start (before it was ever ready)
    pumps: list[threading.Thread] = field(default_factory=list)


def _log_name(spec: EngineSpec) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.name).strip("_") or "engine"
    return f"engine-{safe}-{spec.port}.log"


def _pump(stream: IO[bytes], logger: logging.Logger) -> None:
    """Copy the engine's output into its rotating log, line by line, until it closes."""
    with stream:
        for raw in stream:
            logger.info(raw.decode(errors="replace").rstrip("\n"))


class Supervisor:
    def __init__(
        self,
        specs: Sequence[EngineSpec],
        *,
        log_dir: Path,
        grace_s: float = 10.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        stable_after_s: float = 60.0,
        poll_s: float = 0.5,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.grace_s = grace_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.poll_s = poll_s
        self.on_restart = on_restart
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None
        self.log_dir = log_dir
        if specs:
            log_dir.mkdir(parents=True, exist_ok=True)
        self._children = [self._make_child(spec, log_dir) for spec in specs]

    @staticmethod
    def _make_child(spec: EngineSpec, log_dir: Path) -> _Child:
        path = log_dir / _log_name(spec)
        logger = logging.getLogger(f"vllama.engine.{spec.port}")
        logger.propagate = False  # engine output goes to its file, never the terminal
        logger.setLevel(logging.INFO)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        return _Child(spec=spec, logger=logger, log_path=path)

    # --- facts -------------------------------------------------------------------------

    @property
    def specs(self) -> list[EngineSpec]:
        return [c.spec for c in self._children]

    def log_paths(self) -> dict[str, Path]:
        return {c.spec.url: c.log_path for c in self._children}

    def restarts(self) -> dict[str, int]:
        return {c.spec.url: c.restarts for c in self._children}

    def pgids(self) -> list[int]:
        return [c.proc.pid for c in self._children if c.proc is not None]

    def ready_count(self) -> int:
        return sum(c.ready for c in self._children)

    # status() and memory() read without the lock: the watcher holds it through a health
    # check (up to a second), and these are asked from the event loop.

    def status(self, url: str) -> tuple[bool, str | None]:
        """(ready, why it failed to load) of the engine at `url`; KeyError if unknown."""
        child = self._child(url)
        return child.ready, child.failed

    def memory(self, url: str) -> int | None:
        """Resident memory of the engine's whole process group (API server, engine core,
        workers), in bytes; None when it is not running."""
        try:
            proc = self._child(url).proc
        except KeyError:
            return None
        return group_rss(proc.pid) if proc is not None and proc.returncode is None else None

    def _child(self, url: str) -> _Child:
        for child in list(self._children):
            if child.spec.url == url:
                return child
        raise KeyError(url)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        for child in self._children:
            self._spawn(child)
        self._watch_in_background()

    def _watch_in_background(self) -> None:
        self._monitor = threading.Thread(target=self._watch, name="vllama-supervisor", daemon=True)
        self._monitor.start()

    def add(self, spec: EngineSpec) -> None:
        """Start one more engine now (an on-demand load); `status(spec.url)` follows it."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child = self._make_child(spec, self.log_dir)
        with self._lock:
            if self._stopping.is_set():
                raise EngineStartError("vllama is stopping")
            self._children = [c for c in self._children if c.spec.url != spec.url] + [child]
            self._spawn(child)
            if self._monitor is None:
                self._watch_in_background()

    def remove(self, url: str) -> None:
        """Stop the engine at `url` (SIGTERM to its group, SIGKILL after the grace period)
        and forget it: no restart. Blocks until its processes are gone."""
        with self._lock:
            try:
                child = self._child(url)
            except KeyError:
                return
            self._children.remove(child)
        if child.proc is not None:
            self._terminate([child.proc])
        self._close(child)

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        env = {**os.environ, **spec.env}
        child.logger.info("--- vllama: starting engine %s: %s", spec.name, " ".join(spec.command))
        proc = subprocess.Popen(
            spec.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stopped (and killed) as one
            preexec_fn=_die_with_parent,  # only a prctl call: safe beside threads
        )
        assert proc.stdout is not None
        pump = threading.Thread(
            target=_pump, args=(proc.stdout, child.logger), name=f"engine-log-{spec.port}"
        )
        pump.daemon = True
        pump.start()
        child.pumps = [p for p in child.pumps if p.is_alive()] + [pump]
        child.proc = proc
        child.started_at = time.monotonic()
        child.ready = False
        child.restart_at = None

    def wait_ready(
        self,
        timeout_s: float,
        progress: Callable[[float, int, int], None] | None = None,
    ) -> None:
        """Block until every engine answers /health; raise EngineStartError otherwise."""
        start = time.monotonic()
        deadline = start + timeout_s
        while True:
            with self._lock:
                failed = [c for c in self._children if c.failed]
                ready = self.ready_count()
            if failed:
                c = failed[0]
                raise EngineStartError(
                    f"engine for {c.spec.name} {c.failed}; see its log {c.log_path}:\n"
                    + self.tail(c.log_path)
                )
            if ready == len(self._children):
                return
            if self._stopping.is_set():
                raise EngineStartError("stopped while engines were loading")
            now = time.monotonic()
            if now > deadline:
                slow = [c for c in self._children if not c.ready]
                raise EngineStartError(
                    f"engine for {slow[0].spec.name} not healthy after {timeout_s:.0f}s; raise "
                    f"engine_startup_timeout_s (VLLAMA_ENGINE_STARTUP_TIMEOUT_S) if it is still "
                    f"loading, or see its log {slow[0].log_path}"
                )
            if progress is not None:
                progress(now - start, ready, len(self._children))
            time.sleep(0.1)

    @staticmethod
    def tail(path: Path, lines: int = 25) -> str:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll_s):
            for child in list(self._children):
                with self._lock:
                    if child in self._children:  # not removed meanwhile (no restart then)
                        self._check(child)

    def _check(self, child: _Child) -> None:
        proc = child.proc
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at and not self._stopping.is_set():
                child.restarts += 1
                log.warning(
                    "restarting engine %s at %s (restart %d)",
                    child.spec.name,
                    child.spec.url,
                    child.restarts,
                )
                self._spawn(child)
                if self.on_restart is not None:
                    self.on_restart(child.spec.url)
            return
        if proc is None or child.failed:
            return
        code = proc.poll()
        if code is None:
            if not child.ready and http_ok(f"{child.spec.url}/health", timeout=1.0):
                child.ready = child.was_ready = True
                log.info("engine %s ready at %s", child.spec.name, child.spec.url)
            if child.ready and now - child.started_at > self.stable_after_s:
                child.backoff_s = 0.0  # it stayed up: the next crash restarts quickly again
            return
        # It exited. Whatever else is left of its group (the engine core) goes too.
        self._kill_group(proc.pid, signal.SIGKILL)
        child.ready = False
        if not child.was_ready:
            child.failed = f"exited with code {code} while loading"
            log.error("engine %s %s; see %s", child.spec.name, child.failed, child.log_path)
            return
        child.backoff_s = (
            self.backoff_initial_s
            if child.backoff_s == 0
            else min(child.backoff_s * 2, self.backoff_max_s)
        )
        child.restart_at = now + child.backoff_s
        log.error(
            "engine %s at %s exited with code %s; restarting in %.1fs (log: %s)",
            child.spec.name,
            child.spec.url,
            code,
            child.backoff_s,
            child.log_path,
        )

    @staticmethod
    def _kill_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def stop(self) -> None:
        """SIGTERM every engine's group, SIGKILL what is left after the grace period."""
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join(5)
        with self._lock:
            procs = [c.proc for c in self._children if c.proc is not None]
        self._terminate(procs)
        for child in self._children:
            self._close(child)

    def _terminate(self, procs: Sequence[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            self._kill_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            for proc in procs:
                proc.poll()  # reap the leader so its group can empty
            if not any(group_alive(p.pid) for p in procs):
                break
            time.sleep(0.1)
        for proc in procs:
            if group_alive(proc.pid):
                log.warning(
                    "engine group %d still running after %.0fs; killing", proc.pid, self.grace_s
                )
                self._kill_group(proc.pid, signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    @staticmethod
    def _close(child: _Child) -> None:
        for pump in child.pumps:
            pump.join(2)
        for handler in child.logger.handlers:
            handler.close()
