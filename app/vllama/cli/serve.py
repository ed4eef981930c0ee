"""`vllama serve`: supervised engines (from --model / --demo / the config), then the façade.

Order: check the façade's port, start the engines and wait (spinner), start uvicorn. On
SIGINT/SIGTERM uvicorn drains (/health/ready says "draining" for drain_delay_s on
SIGTERM, then no new connections, in-flight streams finish, bounded by drain_timeout_s),
then every engine's process group gets SIGTERM, SIGKILL after engine_grace_s.

With workers > 1 this process runs the worker processes instead (server/workers.py), in
front of engines that run on their own; supervised engines are refused there.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from vllama.cli.client import facade_url
from vllama.cli.output import ENGINE_START, FAILED, OK, USAGE, CliError
from vllama.cli.plan_cmd import with_planned_engines
from vllama.cli.progress import LoadProgress
from vllama.config import ModelLaunch, Settings
from vllama.engine.launch import PASSTHROUGH_FLAGS, is_cpu_build
from vllama.engine.supervisor import EngineStartError, Supervisor
from vllama.models.store import ModelStore

if TYPE_CHECKING:  # imported when serving: aiohttp and the pool cost every other command
    from vllama.lifecycle.scheduler import EngineScheduler

log = logging.getLogger("vllama.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        action="append",
        metavar="URL",
        help="a running vLLM OpenAI server to front (repeatable)",
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME_OR_PATH",
        help="start a supervised engine for this repo id, alias or path (repeatable)",
    )
    p.add_argument(
        "--demo", action="store_true", help="build (or reuse) the tiny demo model and serve it"
    )
    p.add_argument("--log-format", choices=["json", "text"], default=None)
    engine = p.add_argument_group("engine flags (passed to every started engine; or after --)")
    for flag, takes_value in PASSTHROUGH_FLAGS:
        if takes_value:
            engine.add_argument(flag, default=None, metavar="V")
        else:
            engine.add_argument(flag, action="store_true", default=False)


def engine_args(args: argparse.Namespace) -> list[str]:
    """The engine flags given as `serve` options, in vLLM's spelling, plus those after --."""
    out: list[str] = []
    for flag, takes_value in PASSTHROUGH_FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if takes_value and value is not None:
            out += [flag, str(value)]
        elif not takes_value and value:
            out.append(flag)
    return [*out, *getattr(args, "engine_extra", [])]


def prepare(args: argparse.Namespace) -> None:
    """Turn serve's options into settings flags (highest precedence)."""
    flags: dict[str, Any] = {"log_format": args.log_format}
    if args.engine:
        flags["engines"] = [{"url": u} for u in args.engine]
    if args.model:
        flags["models"] = [{"model": m} for m in args.model]
    args.settings_flags = flags


def _configure_logging(settings: Settings) -> None:
    from vllama.observability.logging import configure_logging

    configure_logging(settings)


def bind_error(host: str, port: int) -> OSError | None:
    """Why the façade could not listen on host:port now, or None when it could."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc
    return None


def _check_port_free(host: str, port: int) -> None:
    exc = bind_error(host, port)
    if exc is not None:
        raise CliError(
            f"cannot listen on {host}:{port} ({exc.strerror}); is vllama or Ollama already "
            "running there? Stop it or pick another --port",
            FAILED,
        ) from exc


def launches(args: argparse.Namespace, settings: Settings) -> list[tuple[ModelLaunch, bool]]:
    """Every engine to start: (launch, is_demo). CLI engine flags apply to each."""
    extra = engine_args(args)
    out = [
        (m.model_copy(update={"engine_args": [*m.engine_args, *extra]}), False)
        for m in settings.models
    ]
    if args.demo:
        from vllama.demo import DEMO_MODEL_NAME, demo_dir
        from vllama.engine.demo_model import build_demo_model, is_built

        path = demo_dir(settings)
        if not is_built(path):
            print(f"vllama: building the demo model in {path} (seconds)", file=sys.stderr)
        build_demo_model(path)
        demo = ModelLaunch(model=str(path), served_name=DEMO_MODEL_NAME, engine_args=extra)
        out.append((demo, True))
    return out


def vllm_available(settings: Settings) -> bool:
    """Whether engines can be started from here: vLLM importable by this interpreter, or
    another interpreter named (`engine_python`, trusted to have it)."""
    import importlib.util

    return settings.engine_python is not None or importlib.util.find_spec("vllm") is not None


def make_scheduler(
    args: argparse.Namespace,
    settings: Settings,
    todo: list[tuple[ModelLaunch, bool]],
    supervisor: Supervisor,
    cpu: bool,
) -> EngineScheduler:
    from vllama.lifecycle.catalog import Catalog
    from vllama.lifecycle.devices import detect_devices, free_memory
    from vllama.lifecycle.scheduler import EngineScheduler

    devices = detect_devices(cpu)
    return EngineScheduler(
        settings,
        supervisor,
        Catalog(settings, engine_args=engine_args(args), configured=todo),
        cpu_build=cpu,
        devices=devices,
        free_memory=lambda: free_memory(devices),
    )


def run(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    _configure_logging(settings)
    with_planned_engines(settings)
    if settings.workers > 1 and (args.demo or settings.models):
        # Supervised engines (and the on-demand ones the pool starts) live in one process.
        raise CliError(
            f"workers = {settings.workers} needs engines that run on their own: supervised "
            "engines (--model, --demo, [[models]]) live in one façade process. Start the "
            "engines with `vllama engine` (systemd, compose; `vllama plan` lays them out) "
            "and give their URLs (--engine, [[engines]], [plan]), or set workers = 1",
            USAGE,
        )
    todo = launches(args, settings)
    if settings.on_demand and not vllm_available(settings):
        log.info("on-demand engines off: vLLM is not installed for this interpreter")
        settings.on_demand = False
    if settings.on_demand and settings.workers > 1:  # an engine one worker started: unknown
        log.info("on-demand engines off: workers = %d front engines only", settings.workers)
        settings.on_demand = False
    if not todo and not settings.engines and not settings.on_demand:
        raise CliError(
            "nothing to serve: give --engine URL (a running vLLM), --model NAME_OR_PATH, --demo, "
            "or declare the host's engines in the config's [plan] (or install vLLM here, so "
            "that pulled models load on demand)",
            USAGE,
        )
    _check_port_free(settings.host, settings.port)
    if settings.workers > 1:
        return _serve_workers(settings)
    for launch, _ in todo:  # never start an engine on a half-written model
        reason = ModelStore(settings).unfinished(settings.resolve_alias(launch.model))
        if reason:
            raise CliError(reason, FAILED)
    cpu = is_cpu_build()
    supervisor = Supervisor([], log_dir=settings.log_dir, grace_s=settings.engine_grace_s)
    scheduler = make_scheduler(args, settings, todo, supervisor, cpu)
    from vllama.upstream.errors import UpstreamError

    try:
        specs = [p.spec for p in scheduler.plan(todo)]  # placed within the memory budget
    except UpstreamError as exc:
        raise CliError(exc.message, FAILED) from exc

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stopping.is_set():
            stopping.set()
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = OK
    try:
        if specs:
            for s in specs:
                supervisor.add(s)
                print(
                    f"vllama: starting engine {s.name} on {s.url} "
                    f"(log: {supervisor.log_paths()[s.url]})",
                    file=sys.stderr,
                )
            progress = LoadProgress(f"loading {len(specs)} engine(s)")
            supervisor.wait_ready(settings.engine_startup_timeout_s, progress.update)
            progress.done(f"vllama: {len(specs)} engine(s) ready")
        if settings.on_demand:
            print(
                "vllama: pulled models load on their first request and unload after "
                f"keep_alive {settings.keep_alive} (memory budget {settings.memory_budget} "
                f"of {', '.join(d.label for d in scheduler.devices)})",
                file=sys.stderr,
            )
        _serve_facade(settings, supervisor, scheduler)
    except KeyboardInterrupt:
        code = OK
    except EngineStartError as exc:
        print(f"vllama serve: {exc}", file=sys.stderr)
        code = ENGINE_START
    finally:
        stopping.set()
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # stopping now; a second signal changes nothing
        if supervisor.pgids():
            print("vllama: stopping engines", file=sys.stderr)
        supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _serve_facade(settings: Settings, supervisor: Supervisor, scheduler: EngineScheduler) -> None:
    from vllama.server.workers import facade_app, serve_here

    app = facade_app(settings, loader=scheduler)
    metrics = getattr(app.state, "metrics", None)
    if metrics is not None:
        supervisor.on_restart = metrics.engine_restarted
    print(f"vllama: serving on {facade_url(settings)} (Ctrl-C stops)", file=sys.stderr)
    try:
        serve_here(settings, app)
    except SystemExit as exc:
        if exc.code:
            raise CliError("the façade could not start (see the messages above)", FAILED) from exc


def _serve_workers(settings: Settings) -> int:
    """workers > 1: this process binds the port and runs the workers (server/workers.py)."""
    from vllama.server.workers import serve_workers

    print(
        f"vllama: serving on {facade_url(settings)} with {settings.workers} worker processes "
        "(Ctrl-C stops)",
        file=sys.stderr,
    )
    try:
        ok = serve_workers(settings)
    except OSError as exc:
        raise CliError(f"cannot listen on {settings.host}:{settings.port}: {exc}", FAILED) from exc
    if not ok:
        raise CliError("façade workers kept dying (see the errors above)", FAILED)
    return OK
