"""`vllama pull | list | rm | ps | show`: the model store on disk and the running façade."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from vllama.cli.client import facade_url, request_json
from vllama.cli.output import FAILED, OK, UNREACHABLE, CliError, emit_json, human_size, table
from vllama.cli.progress import PullProgress
from vllama.config import Settings
from vllama.models.store import ModelStore, StoreError


def _ago(unix: float) -> str:
    delta = max(0.0, time.time() - unix)
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if delta >= size:
            return f"{int(delta // size)} {unit} ago"
    return "just now"


def local_model_dir(name: str) -> Path | None:
    """The directory `name` points at when it is a path rather than a repo id (absolute or
    starting with `.`); CliError when no model is there."""
    if not name.startswith(("/", ".")):
        return None
    path = Path(name)
    if not (path / "config.json").is_file():
        raise CliError(
            f"{name}: no model directory there (no config.json); give a Hugging Face repo "
            "id (ORG/NAME) or the path of a model directory",
            FAILED,
        )
    return path


def _json_line(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def run_pull(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    """Progress on a terminal (stderr); with --json one Ollama-style progress object per
    line on stdout, the last one {"status": "success", "name", "revision", "path"}."""
    # compose's pull step runs on every engine's model: a local directory (the image's demo
    # model, a mounted folder) is already where the engine reads it.
    local = local_model_dir(args.name)
    if local is not None:
        if args.json:
            _json_line(
                {"status": "success", "name": args.name, "revision": None, "path": str(local)}
            )
        elif not args.quiet:
            print(f"{local} is a local model directory: nothing to pull")
        return OK
    store = ModelStore(settings)
    name = store.resolve(args.name)
    if args.json:
        progress: Any = _json_line
    elif args.quiet:
        progress = None
    else:
        progress = PullProgress()
    try:
        path = store.pull(
            args.name,
            revision=args.revision,
            progress=(lambda e: e["status"] != "success" and progress(e)) if progress else None,
        )
    except StoreError as exc:
        if args.json:
            _json_line({"error": str(exc)})
        raise CliError(str(exc), FAILED) from exc
    except KeyboardInterrupt:
        print(
            f"\nvllama pull: interrupted; `vllama pull {args.name}` continues where it stopped",
            file=sys.stderr,
        )
        raise
    result = {
        "status": "success",
        "name": name,
        "revision": args.revision or "main",
        "path": str(path),
    }
    if args.json:
        _json_line(result)
    elif not args.quiet:
        print(f"pulled {name} into {path}")
    return OK


def run_list(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    models = ModelStore(settings).list()
    if args.json:
        emit_json({"models": [m.as_dict() for m in models]})
    elif args.quiet:
        for m in models:
            if m.complete:  # names for scripts: only models an engine can be started on
                print(m.name)
    else:
        rows = [["NAME", "SIZE", "FILES", "MODIFIED", "STATUS"]]
        rows += [
            [
                m.name,
                human_size(m.size_bytes),
                str(m.files),
                _ago(m.modified_unix),
                "complete" if m.complete else f"incomplete: `vllama pull {m.name}` finishes it",
            ]
            for m in models
        ]
        print(table(rows))
    return OK


def served_names(settings: Settings) -> set[str]:
    """Everything running engines serve: ids from the façade's /api/ps and each configured
    engine's /v1/models (ids and roots). Raises CliError(UNREACHABLE) when nobody answers."""
    names: set[str] = set()
    answered = False
    try:
        ps = request_json(f"{facade_url(settings)}/api/ps", timeout=3)
        answered = True
        for m in ps.get("models", []):
            names.update(str(m.get(k)) for k in ("name", "model") if m.get(k))
    except CliError:
        pass
    for engine in settings.engines:
        try:
            data = request_json(f"{engine.url}/v1/models", timeout=3)
        except CliError:
            continue
        answered = True
        for card in data.get("data", []):
            names.update(str(card.get(k)) for k in ("id", "root") if card.get(k))
    if not answered:
        raise CliError(
            f"cannot tell whether the model is in use: no vllama answered at "
            f"{facade_url(settings)} and no configured engine answered; start it, point "
            "--host/--port at it, or use --force",
            UNREACHABLE,
        )
    return names


def run_rm(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    store = ModelStore(settings)
    if store.find(args.name) is None:
        raise CliError(
            f"model '{args.name}' is not in the local store; `vllama list` shows what is there"
        )
    serving: set[str] = set()
    if not args.force:
        serving = served_names(settings)
    try:
        freed = store.delete(args.name, serving=serving)
    except StoreError as exc:
        raise CliError(str(exc), FAILED) from exc
    if args.json:
        emit_json({"name": store.resolve(args.name), "freed_bytes": freed})
    elif not args.quiet:
        print(f"deleted '{store.resolve(args.name)}' ({human_size(freed)} freed)")
    return OK


def human_until(expires_at: str | None, now: float | None = None) -> str:
    """`/api/ps`'s expires_at as `ollama ps` prints it: "4 minutes from now", "Forever",
    "Stopping..." once it has passed."""
    if not expires_at:
        return "Never"
    try:
        when = datetime.fromisoformat(expires_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return expires_at
    delta = when - (time.time() if now is None else now)
    if delta > 20 * 365 * 86400:
        return "Forever"
    if delta <= 0:
        return "Stopping..."
    seconds = int(delta)
    if seconds < 1:
        text = "Less than a second"
    elif seconds < 60:
        text = "1 second" if seconds == 1 else f"{seconds} seconds"
    elif seconds < 3600:
        minutes = seconds // 60
        text = "About a minute" if minutes == 1 else f"{minutes} minutes"
    else:
        hours = round(seconds / 3600)
        text = "About an hour" if hours == 1 else f"{hours} hours"
    return f"{text} from now"


def _processor(size: int, vram: int) -> str:
    if vram == 0:
        return "100% CPU"
    if vram == size:
        return "100% GPU"
    if size == 0 or vram > size:
        return "Unknown"
    cpu = round((size - vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def run_ps(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    """As `ollama ps`: what is loaded, its memory, where, and until when."""
    data = request_json(f"{facade_url(settings)}/api/ps")
    models: list[dict[str, Any]] = data.get("models", [])
    if args.json:
        emit_json(data)
    elif args.quiet:
        for m in models:
            print(m.get("name"))
    else:
        rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
        for m in models:
            size, vram = int(m.get("size") or 0), int(m.get("size_vram") or 0)
            rows.append(
                [
                    str(m.get("name")),
                    str(m.get("digest") or "")[:12],
                    human_size(size),
                    _processor(size, vram),
                    str(m.get("context_length") or "-"),
                    human_until(m.get("expires_at")),
                ]
            )
        print(table(rows))
    return OK


def run_show(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    data = request_json(
        f"{facade_url(settings)}/api/show", method="POST", body={"model": args.name}
    )
    if args.json:
        emit_json(data)
        return OK
    if args.quiet:
        print(args.name)
        return OK
    details = data.get("details") or {}
    info = data.get("model_info") or {}
    arch = info.get("general.architecture")
    print(f"  model: {args.name}")
    for label, value in (
        ("architecture", arch),
        ("parameters", details.get("parameter_size")),
        ("context length", info.get(f"{arch}.context_length") if arch else None),
        ("quantization", details.get("quantization_level")),
        ("format", details.get("format")),
        ("capabilities", ", ".join(data.get("capabilities") or []) or None),
    ):
        if value not in (None, ""):
            print(f"  {label}: {value}")
    if data.get("parameters"):
        print("  parameters:")
        for line in str(data["parameters"]).splitlines():
            print(f"    {line}")
    return OK
