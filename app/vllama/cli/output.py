"""What every command shares: exit codes, printing (`--json`, `--quiet`), talking to the
running façade, human sizes."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

from vllama.config import Settings

# Exit codes (docs/cli.md lists them).
OK = 0
FAILED = 1  # the operation failed or `doctor` found a problem
USAGE = 2  # bad flags or configuration
ENGINE_START = 3  # a supervised engine did not become healthy
UNREACHABLE = 4  # the running façade (or an engine) could not be reached
INTERRUPTED = 130


class CliError(Exception):
    """Printed as `vllama <cmd>: <message>` with exit code `code`."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


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
        try:
            payload = json.loads(exc.read())
            err = payload.get("error")
            message = err.get("message") if isinstance(err, dict) else err
        except (ValueError, AttributeError):
            message = None
        raise CliError(message or f"HTTP {exc.code} from {url}", FAILED) from exc
    except (OSError, ValueError) as exc:
        raise CliError(
            f"no vllama answered at {url.split('/api')[0]} ({exc}); start it with "
            "`vllama serve`, or point --host/--port at it",
            UNREACHABLE,
        ) from exc


def fail(command: str, message: str) -> None:
    print(f"vllama {command}: {message}", file=sys.stderr)
