"""`vllama`: the command line. Thin: parses arguments, loads settings, calls the rooms.

Each subcommand lives in its own module with `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vllama import __version__
from vllama.cli import config_cmd, doctor, engine_cmd, models_cmd, plan_cmd, run_cmd, serve
from vllama.cli.output import USAGE, CliError, fail
from vllama.config import ConfigError, Settings, load_settings


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help="config file (instead of ./vllama.toml)"
    )
    parser.add_argument("--host", default=None, help="the façade's address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="the façade's port (default 11434)")


def _output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("-q", "--quiet", action="store_true", help="print names only / nothing")


def build_parser(*, with_bench: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllama",
        description="Ollama's developer experience with vLLM's performance.",
    )
    parser.add_argument("--version", action="version", version=f"vllama {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("serve", help="start the façade (and supervised engines)")
    _common(p)
    serve.add_arguments(p)

    p = sub.add_parser(
        "engine",
        help="run one vLLM engine (systemd's and compose's engine entry point)",
        description="Run vLLM's OpenAI server with vllama's command line; flags after `--` "
        "go to vLLM unchanged.",
    )
    engine_cmd.add_arguments(p)

    p = sub.add_parser(
        "plan",
        help="the engines this host's GPU declaration yields (ports, devices, commands)",
        description="Lay out the engines of a host's declaration ([plan] in the config, or "
        "--file): names, GPUs, ports, /dev/shm, the `vllama engine` command of each, the "
        "façade's engine list and the Prometheus targets.",
    )
    p.add_argument(
        "--config", type=Path, default=None, help="config file (instead of ./vllama.toml)"
    )
    p.add_argument("--port", type=int, default=None, help="the façade's port, kept free")
    plan_cmd.add_arguments(p)

    p = sub.add_parser("pull", help="download a model from the Hugging Face hub")
    _common(p)
    _output(p)
    p.add_argument("name", help="Hugging Face repo id (org/model) or an alias from the config")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default main)")

    p = sub.add_parser("list", aliases=["ls"], help="models in the local store, with sizes")
    _common(p)
    _output(p)

    p = sub.add_parser("rm", help="remove a model from the local store")
    _common(p)
    _output(p)
    p.add_argument("name")
    p.add_argument(
        "--force", action="store_true", help="remove even when no running vllama can be asked"
    )

    p = sub.add_parser("ps", help="loaded models: memory, processor, until when")
    _common(p)
    _output(p)

    p = sub.add_parser("run", help="chat with a model (pulled first if missing), or answer once")
    _common(p)
    run_cmd.add_run_arguments(p)

    p = sub.add_parser("stop", help="unload a model now")
    _common(p)
    p.add_argument("model")

    p = sub.add_parser("cp", help="give a model another name (an alias, until restart)")
    _common(p)
    p.add_argument("source")
    p.add_argument("destination")

    p = sub.add_parser("show", help="details of a served model")
    _common(p)
    _output(p)
    p.add_argument("name")

    p = sub.add_parser("config", help="print an example config, or the merged settings")
    _common(p)
    p.add_argument("--show", action="store_true", help="merged settings and their sources")
    p.add_argument("--json", action="store_true", help="with --show: print JSON")

    p = sub.add_parser("doctor", help="check this machine, the config and the engines")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the checks as JSON")

    sub.add_parser("version", help="print vllama's version")

    p = sub.add_parser("bench", help="load test an Ollama or OpenAI endpoint")
    if with_bench:  # its load generator imports aiohttp (a second): only when asked for
        from vllama.bench import command as bench

        bench.add_arguments(p)
    return parser


def settings_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user gave as flags (None: not given)."""
    if getattr(args, "command", None) == "engine":
        return {}  # its --host/--port are the engine's, not the façade's
    flags: dict[str, Any] = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
    }
    flags.update(getattr(args, "settings_flags", {}) or {})
    return flags


def load(args: argparse.Namespace) -> tuple[Settings, dict[str, str]]:
    return load_settings(settings_flags(args), config_file=getattr(args, "config", None))


_RUNNERS = {
    "serve": serve.run,
    "pull": models_cmd.run_pull,
    "list": models_cmd.run_list,
    "ls": models_cmd.run_list,
    "rm": models_cmd.run_rm,
    "ps": models_cmd.run_ps,
    "run": run_cmd.run_run,
    "stop": run_cmd.run_stop,
    "cp": run_cmd.run_cp,
    "show": models_cmd.run_show,
    "config": config_cmd.run,
    "engine": engine_cmd.run,
    "plan": plan_cmd.run,
}


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line. `vllama run`'s prompt words may also come after its options
    (`vllama run M --verbose why is the sky blue`, as `ollama run` takes them):
    argparse alone ends a `*` positional at the first option."""
    parser = build_parser(with_bench=bool(argv) and argv[0] == "bench")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "run" and not any(a.startswith("-") for a in extra):
        args.prompt = [*args.prompt, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after a bare `--` goes to the engines unchanged (`vllama serve -- --seed 0`,
    # `vllama engine --model M -- --seed 0`).
    engine_extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, engine_extra = argv[:cut], argv[cut + 1 :]
    args = parse(argv)
    args.engine_extra = engine_extra
    if engine_extra and args.command not in ("serve", "engine"):
        fail(
            args.command,
            "arguments after `--` are engine flags: only `serve` and `engine` take them",
        )
        return USAGE
    if args.command == "version":
        print(f"vllama {__version__}")
        return 0
    if args.command == "bench":
        from vllama.bench import command as bench

        return bench.run(args)
    if args.command == "doctor":
        return doctor.run(args, lambda: load(args))
    if args.command == "config" and not args.show:
        return config_cmd.print_example()
    try:
        if args.command == "serve":
            serve.prepare(args)
        settings, sources = load(args)
        return _RUNNERS[args.command](args, settings, sources)
    except ConfigError as exc:
        fail(args.command, str(exc))
        return USAGE
    except CliError as exc:
        fail(args.command, str(exc))
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `vllama list | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
