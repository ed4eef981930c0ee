"""The HTTP server under the same ASGI app: uvicorn (uvloop + httptools, what `vllama
serve` runs) against Granian (a Rust HTTP server an operator could run in production),
interleaved in one run (tests/perf/ab.py's loads and harness). Prints the CPU per request
and per streamed token of each, and Granian ÷ uvicorn.

Granian is not a dependency of vllama: install it for this comparison only, beside the
venv (the script says how when it is missing):

    .venv/bin/python -m pip install --target .cache/granian granian
    python -m tests.perf.servers [--rounds 5] [--seconds 2.5] [--json FILE]

What the uvicorn side has that Granian's does not (server/http.py): header size and count
limits (431), a header timeout (408 in the API's shape), the connection cap (503 with
Retry-After) and the drain on SIGTERM; Granian has its own header read timeout and
backpressure, not the same answers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.perf import procs
from tests.perf.ab import INSTANT, LOADS, TOKENS, compare
from tests.perf.harness import LoadMonitor, describe_load, level, machine
from tests.procs import REPO, free_port

GRANIAN = REPO / ".cache" / "granian"
ENGINE_ENV = "VLLAMA_BENCH_ENGINE"


def app_factory() -> Any:
    """The façade's app as `vllama serve --engine URL` builds it (Granian calls this)."""
    from vllama.config import Settings
    from vllama.observability.logging import configure_logging
    from vllama.server.app import create_app

    settings = Settings(engines=[{"url": os.environ[ENGINE_ENV]}], log_format="json")
    configure_logging(settings)
    return create_app(settings)


def granian_facade(engine_url: str, name: str) -> procs.Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop"]
    cmd += ["--workers", "1", "--no-ws", "--log-level", "warning", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--factory", "tests.perf.servers:app_factory"]
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(GRANIAN)) if p)
    return procs.spawn(name, cmd, port, {"PYTHONPATH": path, ENGINE_ENV: engine_url})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.5)
    parser.add_argument("--loads", default=",".join(INSTANT), help="comma-separated load names")
    parser.add_argument("--json", type=Path, help="write the figures here as well")
    args = parser.parse_args()
    if not (GRANIAN / "granian").is_dir():
        raise SystemExit(
            f"Granian is missing: {sys.executable} -m pip install --target {GRANIAN} granian"
        )
    loads = [name.strip() for name in args.loads.split(",")]
    with ExitStack() as stack:
        facades: dict[str, dict[str, procs.Proc]] = {}
        for upstream in sorted({LOADS[name][3] for name in loads}):
            interval = 2.0 if upstream == "paced" else 0.0
            up = stack.enter_context(
                procs.running(
                    procs.instant_upstream(chunks=TOKENS, interval_ms=interval), "/health"
                )
            )
            uvi = procs.facade(up.url, f"facade-uvicorn-{upstream}")
            gra = granian_facade(up.url, f"facade-granian-{upstream}")
            facades[upstream] = {
                "uvicorn": stack.enter_context(procs.running(uvi, "/health/ready")),
                "granian": stack.enter_context(procs.running(gra, "/health/ready")),
            }
            for fac in facades[upstream].values():
                for api in ("openai", "ollama"):
                    level(fac.url, api, True, 4, 0.5, 100, max_tokens=TOKENS)
        print(f"old = uvicorn, new = Granian; {args.rounds} rounds, interleaved")
        with LoadMonitor() as load:
            figures = compare(facades, loads, args.rounds, args.seconds, ("uvicorn", "granian"))
        print(describe_load(load.summary()))
    if args.json:
        doc = {
            "machine": machine(),
            "rounds": args.rounds,
            "load": load.summary(),
            "sides": {"old": "uvicorn", "new": "granian"},
            "loads": figures,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
