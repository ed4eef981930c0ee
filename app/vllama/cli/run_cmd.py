"""`vllama run MODEL [PROMPT]`, `vllama stop MODEL`, `vllama cp SRC DST`: Ollama's commands,
through the running façade's Ollama API as `ollama` does (cmd/cmd.go: RunHandler,
StopHandler, CopyHandler).

`run` asks `/api/show`; a model the façade does not know is pulled first (`/api/pull`,
with progress). An embedding model embeds the prompt. With a prompt argument or piped
stdin it answers once (`/api/generate`, streamed to stdout); on a terminal it loads the
model (`/api/generate` without a prompt: the first start of an engine takes a while, a
spinner shows it) and opens the chat (cli/repl.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

from vllama.cli.client import facade_url, request_json, stream_lines
from vllama.cli.output import FAILED, OK, CliError
from vllama.cli.progress import PullProgress, Spinner
from vllama.cli.repl import Options, Session, line_editing
from vllama.config import Settings
from vllama.names import strip_latest, tagged

LOAD_TIMEOUT_S = 1800.0  # a first engine start on a slow machine, plus a download
HISTORY = Path.home() / ".vllama" / "history"  # as Ollama keeps ~/.ollama/history


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a pulled model, a Hugging Face repo id or an Ollama name")
    p.add_argument("prompt", nargs="*", help="answer this once instead of chatting")
    p.add_argument(
        "--keepalive", default=None, help="how long the model stays loaded (5m, 1h, 0, -1)"
    )
    p.add_argument("--format", default="", help="the answer's format (json)")
    p.add_argument(
        "--think",
        nargs="?",
        const="true",
        default=None,
        help="thinking models: true, false, low, medium or high",
    )
    p.add_argument("--hidethinking", action="store_true", help="do not print the thinking")
    p.add_argument("--verbose", action="store_true", help="print timings after each answer")
    p.add_argument("--nowordwrap", action="store_true", help="accepted for Ollama's sake")


class HttpBackend:
    """The façade's Ollama API, for the chat session."""

    def __init__(self, base: str) -> None:
        self.base = base

    def chat(self, body: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
        yield from stream_lines(f"{self.base}/api/chat", body, timeout=LOAD_TIMEOUT_S)

    def show(self, model: str) -> dict[str, Any] | None:
        try:
            info = request_json(f"{self.base}/api/show", method="POST", body={"model": model})
        except CliError as exc:
            if exc.status == 404:
                return None
            raise
        return info if isinstance(info, dict) else None

    def load(self, model: str, keep_alive: Any) -> None:
        body: dict[str, Any] = {"model": model}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        request_json(f"{self.base}/api/generate", method="POST", body=body, timeout=LOAD_TIMEOUT_S)

    def tags(self) -> list[dict[str, Any]]:
        data = request_json(f"{self.base}/api/tags")
        return list(data.get("models", [])) if isinstance(data, dict) else []

    def pull(self, model: str) -> None:
        progress = PullProgress()
        for event in stream_lines(f"{self.base}/api/pull", {"model": model}, timeout=None):
            if event.get("status") != "success":
                progress(event)


def _think(value: str | None) -> bool | str | None:
    if value is None:
        return None
    if value in ("true", "false"):
        return value == "true"
    if value in ("low", "medium", "high", "max"):
        return value
    raise CliError(
        f"invalid value for --think: {value!r} (must be true, false, high, medium, low, or max)",
        2,
    )


def _keep_alive(value: str | None) -> Any:
    if value is None:
        return None
    from vllama.units import parse_duration

    try:
        parse_duration(value)
    except ValueError as exc:
        raise CliError(f"--keepalive {exc}", 2) from exc
    return value


def show_or_pull(backend: HttpBackend, model: str) -> dict[str, Any]:
    info = backend.show(model)
    if info is not None:
        return info
    backend.pull(model)  # raises CliError with the façade's message when it cannot
    info = backend.show(model)
    if info is None:
        raise CliError(f"model '{model}' was pulled but the server does not list it", FAILED)
    return info


def run_run(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    backend = HttpBackend(facade_url(settings))
    options = Options(
        keep_alive=_keep_alive(args.keepalive),
        format=args.format,
        think=_think(args.think),
        hide_thinking=args.hidethinking,
        verbose=args.verbose,
        word_wrap=not args.nowordwrap,
    )
    prompts = list(args.prompt)
    interactive = not prompts
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        if piped:
            prompts = [piped, *prompts]
        interactive = False
    if not sys.stdout.isatty():
        interactive = False
    info = show_or_pull(backend, args.model)
    prompt = " ".join(prompts)
    if "embedding" in (info.get("capabilities") or []):
        return _embed(backend, args.model, prompt, options)
    if interactive:
        with Spinner():
            backend.load(args.model, options.keep_alive)
        with line_editing(HISTORY) as (read, set_history):
            session = Session(
                backend, args.model, options, spinner=Spinner, set_history=set_history
            )
            return session.run(read)
    return _generate(backend, args.model, prompt, options)


def _generate(backend: HttpBackend, model: str, prompt: str, options: Options) -> int:
    body: dict[str, Any] = {"model": model, "prompt": prompt, "stream": True}
    if options.format:
        body["format"] = options.format
    if options.think is not None:
        body["think"] = options.think
    if options.keep_alive is not None:
        body["keep_alive"] = options.keep_alive
    final: dict[str, Any] = {}
    spinner = Spinner()
    try:
        for chunk in stream_lines(f"{backend.base}/api/generate", body, timeout=LOAD_TIMEOUT_S):
            text = chunk.get("response") or ""
            thinking = chunk.get("thinking") or ""
            if text or thinking:
                spinner.stop()
            if thinking and not options.hide_thinking:
                sys.stdout.write(thinking)
            sys.stdout.write(text)
            sys.stdout.flush()
            if chunk.get("done"):
                final = chunk
    finally:
        spinner.stop()
    if prompt:
        sys.stdout.write("\n\n")
        sys.stdout.flush()
    if options.verbose and final:
        from vllama.cli.repl import stats_lines

        for line in stats_lines(final):
            print(line, file=sys.stderr)
    return OK


def _embed(backend: HttpBackend, model: str, prompt: str, options: Options) -> int:
    if not prompt:
        raise CliError(
            f'embedding models require input text. Usage: vllama run {model} "your text here"',
            FAILED,
        )
    body: dict[str, Any] = {"model": model, "input": prompt}
    if options.keep_alive is not None:
        body["keep_alive"] = options.keep_alive
    with Spinner():
        data = request_json(
            f"{backend.base}/api/embed", method="POST", body=body, timeout=LOAD_TIMEOUT_S
        )
    for vector in data.get("embeddings", []):
        print(json.dumps(vector))
    return OK


def run_stop(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    """As `ollama stop`: an empty request with keep_alive 0. vllama also checks /api/ps:
    an engine it only fronts cannot be stopped from here, and says so."""
    base = facade_url(settings)
    try:
        request_json(
            f"{base}/api/generate",
            method="POST",
            body={"model": args.model, "keep_alive": 0},
            timeout=60,
        )
    except CliError as exc:
        if exc.status == 404:
            raise CliError(f'couldn\'t find model "{args.model}" to stop', FAILED) from exc
        raise
    running = request_json(f"{base}/api/ps").get("models", [])
    names = {str(m.get(k)) for m in running for k in ("name", "model")}
    wanted = {args.model, tagged(args.model), strip_latest(args.model)}
    if names & wanted:
        raise CliError(
            f"model '{args.model}' is served by an engine vllama does not start or stop "
            "(--engine, compose or systemd): stop that engine where it runs",
            FAILED,
        )
    return OK


def run_cp(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    request_json(
        f"{facade_url(settings)}/api/copy",
        method="POST",
        body={"source": args.source, "destination": args.destination},
    )
    print(f"copied '{args.source}' to '{args.destination}'")
    return OK
