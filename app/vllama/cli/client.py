"""Talking HTTP to the running façade and to engines: where the façade answers, JSON
requests whose failures are CliErrors, and a probe that never raises (for `doctor`)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from vllama.cli.output import FAILED, UNREACHABLE, CliError
from vllama.config import Settings


def facade_url(settings: Settings) -> str:
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # listening everywhere: reach it locally
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def request_json(url: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0) -> Any:
    """JSON from `url`; raises CliError(UNREACHABLE) when nothing answers, CliError(FAILED)
    with the server's own message on an HTTP error."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise _http_error(exc, url) from exc
    except (OSError, ValueError) as exc:
        raise CliError(
            f"no vllama answered at {url.split('/api')[0]} ({exc}); start it with "
            "`vllama serve`, or point --host/--port at it",
            UNREACHABLE,
        ) from exc


def probe(url: str, timeout: float = 3.0) -> tuple[int | None, str]:
    """(HTTP status, the start of the body or the reason); (None, why) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read(200).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), str(exc.reason)
    except OSError as exc:
        return None, str(getattr(exc, "reason", exc))


def stream_lines(url: str, body: Any, *, timeout: float | None = None) -> Iterator[dict[str, Any]]:
    """POST `body` and yield each NDJSON object of the answer as it arrives (Ollama's
    streams). HTTP errors and an `{"error": ...}` line raise CliError with the server's
    message. Closing the generator (or Ctrl-C) closes the connection, which ends the
    request on the server too."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise _http_error(exc, url) from exc
    except OSError as exc:
        raise CliError(
            f"no vllama answered at {url.split('/api')[0]} ({exc}); start it with "
            "`vllama serve`, or point --host/--port at it",
            UNREACHABLE,
        ) from exc
    with resp:
        for raw in resp:
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                raise CliError(f"{url} sent a line that is not JSON", FAILED) from exc
            if isinstance(obj, dict) and obj.get("error"):
                raise CliError(str(obj["error"]), FAILED)
            if isinstance(obj, dict):
                yield obj


def _http_error(exc: urllib.error.HTTPError, url: str) -> CliError:
    try:
        payload = json.loads(exc.read())
        err = payload.get("error")
        message = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        message = None
    return CliError(message or f"HTTP {exc.code} from {url}", FAILED, status=exc.code)
