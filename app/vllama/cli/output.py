"""What every command shares: exit codes, errors, printing (`--json`, `--quiet`, tables),
human sizes. Talking to the running façade is cli/client.py."""

from __future__ import annotations

import json
import sys
from typing import Any

# Exit codes (docs/cli.md lists them).
OK = 0
FAILED = 1  # the operation failed or `doctor` found a problem
USAGE = 2  # bad flags or configuration
ENGINE_START = 3  # a supervised engine did not become healthy
UNREACHABLE = 4  # the running façade (or an engine) could not be reached
INTERRUPTED = 130


class CliError(Exception):
    """Printed as `vllama <cmd>: <message>` with exit code `code`."""

    def __init__(self, message: str, code: int = FAILED, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status  # the HTTP status, when a server answered with an error


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


def fail(command: str, message: str) -> None:
    print(f"vllama {command}: {message}", file=sys.stderr)
