"""Running the façade: in this process, or as `workers` processes on one listening socket.

With workers > 1 this process is the parent: it binds the port, creates what the workers
share (prometheus-client's multiprocess folder, security/shared.py's limits), starts
the workers (multiprocessing "spawn": fresh interpreters, nothing inherited but what is
passed), forwards SIGTERM/SIGINT to them, replaces a worker that dies, and gives up when
they keep dying (RESTART_LIMIT within RESTART_WINDOW_S). The kernel hands each new
connection to one worker; every worker serves every route.

What holds across workers and what is per worker (docs/scale-out.md says why):
- across: /metrics (any worker answers with every worker's values merged), per-key
  concurrency and per-client rates (SharedLimits);
- per worker: the admission queue (`max_in_flight`, `max_queue`) and `max_connections`
  (host totals: workers x each), engine health, breakers and load polls (each worker
  checks the engines itself), and the alias registry (so /api/copy and alias deletion
  are refused while workers > 1: put aliases in the config).

Draining (DrainingServer): SIGTERM turns /health/ready to 503 "draining" at once while
requests are still taken for `drain_delay_s`, then new connections are refused and
in-flight requests get `drain_timeout_s` to finish.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from multiprocessing.connection import wait as wait_for
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from vllama.config import Settings
from vllama.models.store import ApiModelStore, ModelStore
from vllama.observability.logging import configure_logging
from vllama.security.keys import KeyStore
from vllama.security.shared import SharedLimits
from vllama.server.app import create_app
from vllama.server.http import uvicorn_config
from vllama.upstream.loader import EngineLoader

log = logging.getLogger("vllama.workers")

RESTART_LIMIT = 5  # worker deaths within the window before the parent gives up
RESTART_WINDOW_S = 60.0
_KILL_MARGIN_S = 10.0  # past drain_delay_s + drain_timeout_s, stragglers get SIGKILL
_BACKLOG = 2048


def facade_app(
    settings: Settings,
    *,
    loader: EngineLoader | None = None,
    shared_limits: SharedLimits | None = None,
    metrics_dir: str | None = None,
) -> FastAPI:
    """The app a façade process serves: create_app plus the model store on disk. `loader`
    (vllama serve, workers = 1) starts engines of pulled models on demand."""
    app = create_app(settings, loader=loader, shared_limits=shared_limits, metrics_dir=metrics_dir)
    if getattr(app.state, "model_store", None) is None:  # /api/pull, /api/delete do real work
        app.state.model_store = ApiModelStore(ModelStore(settings))
    return app


class DrainingServer(uvicorn.Server):
    """uvicorn, draining in two steps on SIGTERM: /health/ready answers 503 "draining" at
    once while requests are still taken for `drain_delay_s` (a gateway's active health
    check notices and stops sending), then uvicorn stops accepting and in-flight requests
    get its graceful-shutdown timeout. SIGINT skips the delay; a second SIGINT ends at once
    (uvicorn's rule); a repeated SIGTERM changes nothing."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_delay_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._delay = drain_delay_s
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._app.state.draining = True
        if sig == signal.SIGTERM and self._delay > 0 and not self.should_exit:
            if self._timer is None:
                log.info(
                    "draining: /health/ready answers 503 for %g s, then new connections are "
                    "refused and in-flight requests finish",
                    self._delay,
                )
                self._timer = threading.Timer(self._delay, self._stop, (sig, frame))
                self._timer.daemon = True
                self._timer.start()
            return
        if self._timer is not None:
            self._timer.cancel()
        super().handle_exit(sig, frame)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)


def _server(app: FastAPI, settings: Settings) -> DrainingServer:
    config = uvicorn_config(
        app,
        settings,
        log_config=None,  # keep the logging vllama set up
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
    )
    return DrainingServer(config, app, settings.drain_delay_s)


def serve_here(settings: Settings, app: FastAPI | None = None) -> None:
    """One façade in this process (workers = 1), until SIGTERM/SIGINT has drained it."""
    _server(app if app is not None else facade_app(settings), settings).run()


# --- several workers -----------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """The listening socket the workers share (as uvicorn binds: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(_BACKLOG)
    sock.set_inheritable(True)
    return sock


def _worker_main(
    settings: Settings,
    sock: socket.socket,
    index: int,
    shared: SharedLimits,
    metrics_dir: str,
    parent: int,
) -> None:
    """One worker process (the spawn target)."""
    # Its own process group: a terminal's Ctrl-C reaches the parent alone, which forwards
    # it once (twice would be uvicorn's "exit now").
    os.setpgrp()
    configure_logging(settings)
    shared.attach(index)
    app = facade_app(settings, shared_limits=shared, metrics_dir=metrics_dir)
    server = _server(app, settings)

    def orphaned() -> None:  # the parent was killed: drain and leave, never linger
        while os.getppid() == parent:
            time.sleep(1.0)
        server.handle_exit(signal.SIGTERM, None)

    threading.Thread(target=orphaned, name="vllama-parent-watch", daemon=True).start()
    # uvicorn re-raises the signal it stopped on once it is done, with the handler found
    # before it ran: this one, so that a drained worker exits 0 instead of dying by it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    server.run(sockets=[sock])


class WorkerSet:
    """The parent's view: start, watch, replace and stop the workers."""

    def __init__(self, settings: Settings, sock: socket.socket, metrics_dir: str) -> None:
        self.settings = settings
        self.sock = sock
        self.metrics_dir = metrics_dir
        self._ctx = multiprocessing.get_context("spawn")
        keys = KeyStore.from_settings(settings)
        self.shared = SharedLimits(self._ctx, settings.workers, keys.limited_names())
        self.procs: dict[int, BaseProcess] = {}
        self._deaths: deque[float] = deque()
        self.stopping = False
        self.failed = False
        self._deadline: float | None = None

    def start(self, index: int) -> None:
        if self.stopping:  # a signal arrived while the workers were being started
            return
        proc = self._ctx.Process(
            target=_worker_main,
            args=(self.settings, self.sock, index, self.shared, self.metrics_dir, os.getpid()),
            name=f"vllama-worker-{index}",
        )
        proc.start()
        self.procs[index] = proc

    def signal_all(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.pid is not None and proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)

    def stop(self, sig: int) -> None:
        """Drain every worker (sig: SIGTERM, or SIGINT to skip the drain delay). Called
        from the signal handler: the socket is closed by the main loop (close_listener)."""
        if not self.stopping:
            self.stopping = True
            delay = self.settings.drain_delay_s if sig == signal.SIGTERM else 0.0
            self._deadline = (
                time.monotonic() + delay + self.settings.drain_timeout_s + _KILL_MARGIN_S
            )
        self.signal_all(sig)

    def reap(self) -> None:
        """Collect workers that exited; replace them unless stopping (or dying too often)."""
        for index, proc in list(self.procs.items()):
            if proc.exitcode is None:
                continue
            proc.join()
            del self.procs[index]
            self._forget(index, proc)
            if self.stopping:
                continue
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and now - self._deaths[0] > RESTART_WINDOW_S:
                self._deaths.popleft()
            if len(self._deaths) > RESTART_LIMIT:
                log.error(
                    "façade workers died %d times within %.0f s; stopping (see the errors above)",
                    len(self._deaths),
                    RESTART_WINDOW_S,
                )
                self.failed = True
                self.stop(signal.SIGTERM)
                continue
            log.error(
                "façade worker %d (pid %s) exited with code %s; starting a new one",
                index,
                proc.pid,
                proc.exitcode,
            )
            self.start(index)

    def _forget(self, index: int, proc: BaseProcess) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        if proc.pid is not None:
            mark_process_dead(proc.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        self.shared.clear_row(index)  # what its requests held per key is free again

    def close_listener(self) -> None:
        """Once stopping: let go of the parent's copy of the listening socket, so that the
        port refuses connections as soon as every worker has stopped accepting (held
        open, it would queue them unanswered)."""
        if self.stopping and self.sock.fileno() != -1:
            self.sock.close()

    def wait(self, timeout: float) -> None:
        sentinels = [p.sentinel for p in self.procs.values()]
        if sentinels:
            wait_for(sentinels, timeout)
        if self._deadline is not None and time.monotonic() > self._deadline:
            log.error("façade workers still running past the drain timeout; killing them")
            self.signal_all(signal.SIGKILL)
            self._deadline = None


def _metrics_dir(settings: Settings) -> tuple[str, bool]:
    """prometheus-client's multiprocess folder, emptied (its values are per run), and
    whether it was made here (then removed at the end)."""
    if settings.metrics_dir is None:
        return tempfile.mkdtemp(prefix="vllama-metrics-"), True
    path = Path(settings.metrics_dir)
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink()
    return str(path), False


def serve_workers(settings: Settings) -> bool:
    """`settings.workers` façade processes on one port, until SIGTERM/SIGINT has drained
    them all. False when workers kept dying."""
    sock = bind(settings.host, settings.port)
    metrics_dir, made = _metrics_dir(settings)
    # prometheus-client picks its multiprocess mode when imported: in the spawned workers,
    # from this variable, which they inherit.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    workers = WorkerSet(settings, sock, metrics_dir)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        workers.stop(signum)

    previous: dict[int, Any] = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        for index in range(settings.workers):
            workers.start(index)
        while workers.procs:
            workers.close_listener()
            workers.wait(0.5)
            workers.reap()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        workers.signal_all(signal.SIGKILL)  # only if we got here by an exception
        sock.close()
        workers.shared.close()
        if made:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return not workers.failed
