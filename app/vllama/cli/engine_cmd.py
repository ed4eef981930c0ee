"""`vllama engine`: run one vLLM OpenAI server with the command line `engine/launch.py`
builds. The entry point of systemd's engine unit and compose's engine services, so no ops
file spells vLLM's command line itself.

`--planned NAME` (env VLLAMA_ENGINE_PLANNED) runs engine NAME of the config's `[plan]`
(`vllama plan` lists them): model, name, host, port, flags and its GPUs
(CUDA_VISIBLE_DEVICES) all come from the one declaration.

Every option may come from the environment instead (an env file, compose's
`environment:`): VLLAMA_ENGINE_MODEL, _NAME, _HOST, _PORT, _ARGS, _ARGS_FILE. Engine flags
are a list, never a word-split string: VLLAMA_ENGINE_ARGS and the file hold a JSON list
(`["--override-generation-config", "{\\"temperature\\": 0}"]`) or shell-quoted text
(`--override-generation-config '{"temperature": 0}'`); flags after a bare `--` are passed
as they are. The file wins over the variable's list; both come before the `--` flags.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from vllama.cli.output import FAILED, USAGE, CliError, emit_json
from vllama.config import ModelLaunch, Settings
from vllama.engine.launch import (
    ENGINE_HOST,
    EngineSpec,
    engine_spec,
    is_cpu_build,
    with_defaults,
)
from vllama.engine.plan import PlanError, plan_host
from vllama.models.store import ModelStore

DEFAULT_PORT = 8000  # vLLM's own default
# vLLM's own graceful shutdown (vLLM 0.32 `--shutdown-timeout`; its default 0 aborts what
# it is running): a stopped engine lets its running requests finish for up to this long.
# Below what the service managers wait before SIGKILL: the engine unit's TimeoutStopSec
# (60 s) and compose's stop_grace_period for engines (60 s).
ENGINE_DEFAULT_FLAGS = {"--shutdown-timeout": "30"}
ENV = {
    "model": "VLLAMA_ENGINE_MODEL",
    "served_name": "VLLAMA_ENGINE_NAME",
    "host": "VLLAMA_ENGINE_HOST",
    "port": "VLLAMA_ENGINE_PORT",
    "args": "VLLAMA_ENGINE_ARGS",
    "args_file": "VLLAMA_ENGINE_ARGS_FILE",
    "planned": "VLLAMA_ENGINE_PLANNED",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, default=None, help="config file (cache_dir, aliases, engine_python)"
    )
    p.add_argument("--model", default=None, help=f"repo id, path or alias (env {ENV['model']})")
    p.add_argument(
        "--served-name",
        default=None,
        help=f"the name clients use (env {ENV['served_name']}; default: the model)",
    )
    p.add_argument(
        "--host", default=None, help=f"listen address (env {ENV['host']}; default {ENGINE_HOST})"
    )
    p.add_argument(
        "--port", type=int, default=None, help=f"port (env {ENV['port']}; default {DEFAULT_PORT})"
    )
    p.add_argument(
        "--args-file",
        type=Path,
        default=None,
        help=f"engine flags: a JSON list or shell-quoted text (env {ENV['args_file']})",
    )
    p.add_argument(
        "--planned",
        default=None,
        metavar="NAME",
        help=f"run engine NAME of the config's [plan] (env {ENV['planned']}; `vllama plan` lists them)",
    )
    p.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="print the command and environment as JSON instead of running it",
    )


def parse_flags(text: str, where: str) -> list[str]:
    """Engine flags from a JSON list or shell-quoted text."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(f"{where}: not a valid JSON list ({exc})", USAGE) from exc
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CliError(f"{where}: give a JSON list of strings", USAGE)
        return value
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise CliError(
            f"{where}: {exc}; quote values with spaces or give a JSON list", USAGE
        ) from exc


def engine_flags(args: argparse.Namespace, environ: Mapping[str, str]) -> list[str]:
    flags: list[str] = []
    path = args.args_file or (
        Path(environ[ENV["args_file"]]) if environ.get(ENV["args_file"]) else None
    )
    if path is not None:
        try:
            flags += parse_flags(path.read_text(encoding="utf-8"), str(path))
        except OSError as exc:
            raise CliError(
                f"cannot read the engine flags file {path}: {exc.strerror}", USAGE
            ) from exc
    elif environ.get(ENV["args"]):
        flags += parse_flags(environ[ENV["args"]], ENV["args"])
    return with_defaults(
        flags + list(getattr(args, "engine_extra", []) or []), ENGINE_DEFAULT_FLAGS
    )


def check_model_ready(model: str, settings: Settings, environ: Mapping[str, str]) -> None:
    """Refuse to hand vLLM a model from the cache that is half-written, or (offline) not
    there at all: it would fail later, or serve a broken model."""
    ref = settings.resolve_alias(model)
    if Path(ref).is_dir():
        return
    store = ModelStore(settings)
    reason = store.unfinished(ref)
    if reason:
        raise CliError(reason, FAILED)
    offline = environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline and store.find(ref) is None:
        raise CliError(
            f"model '{ref}' is not in the model cache ({store.cache_dir or 'the Hugging Face cache'}) "
            f"and the engine runs offline (HF_HUB_OFFLINE=1): download it first with "
            f"`vllama pull {ref}` (as the user the engine runs as)",
            FAILED,
        )


def planned(
    name: str, settings: Settings, extra: list[str], environ: Mapping[str, str]
) -> EngineSpec:
    """Engine `name` of the config's [plan], with its GPUs in its environment."""
    if settings.plan is None:
        raise CliError(
            f"--planned {name}: the configuration has no [plan]; add one or give --model", USAGE
        )
    try:
        lay = plan_host(settings.plan, facade_port=settings.port)
    except PlanError as exc:
        raise CliError(f"the plan cannot be laid out: {exc}", USAGE) from exc
    chosen = next((e for e in lay.engines if e.name == name), None)
    if chosen is None:
        names = ", ".join(e.name for e in lay.engines) or "none"
        raise CliError(f"the plan has no engine '{name}' (it has: {names})", USAGE)
    check_model_ready(chosen.model, settings, environ)
    launch = ModelLaunch(
        model=chosen.model, served_name=chosen.served_name, engine_args=[*chosen.args, *extra]
    )
    spec = engine_spec(
        launch,
        settings,
        chosen.port,
        cpu_build=is_cpu_build(),
        host=chosen.host,
        environ=environ,
    )
    gpu_env = {k: v for k, v in chosen.env().items() if not k.startswith("VLLAMA_ENGINE_")}
    return replace(spec, env={**spec.env, **gpu_env})


def plan(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> EngineSpec:
    """The engine `vllama engine` would run, from flags, then the environment."""
    name = getattr(args, "planned", None) or environ.get(ENV["planned"], "").strip()
    if name and args.model:
        raise CliError("give --planned NAME or --model, not both", USAGE)
    if name:
        return planned(name, settings, engine_flags(args, environ), environ)
    model = args.model or environ.get(ENV["model"], "").strip()
    if not model:
        raise CliError(f"give the model: --model NAME_OR_PATH or {ENV['model']}", USAGE)
    port_text = str(
        args.port if args.port is not None else environ.get(ENV["port"], "").strip() or DEFAULT_PORT
    )
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise CliError(f"engine port {port_text!r} is not a port number (1-65535)", USAGE)
    check_model_ready(model, settings, environ)
    launch = ModelLaunch(
        model=model,
        served_name=args.served_name or environ.get(ENV["served_name"]) or None,
        engine_args=engine_flags(args, environ),
    )
    return engine_spec(
        launch,
        settings,
        int(port_text),
        cpu_build=is_cpu_build(),
        host=args.host or environ.get(ENV["host"], "").strip() or ENGINE_HOST,
        environ=environ,
    )


def run(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    spec = plan(args, settings, os.environ)
    if args.print_only:
        emit_json({"command": spec.command, "env": spec.env, "name": spec.name})
        return 0
    print(f"vllama engine: {shlex.join(spec.command)}", file=sys.stderr, flush=True)
    # Replace this process: systemd and compose signal vLLM itself, with nothing between.
    os.execve(spec.command[0], spec.command, {**os.environ, **spec.env})
    return 0  # not reached
