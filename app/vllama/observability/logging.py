"""Logging setup: JSON lines (python-json-logger) or plain text, and the access line.

The access logger only ever receives the fields listed in `ACCESS_FIELDS`; prompts,
completions and API keys never reach a log record (the key's *name* does).
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any, Literal

from pythonjsonlogger.json import JsonFormatter

from vllama.config import Settings

ACCESS_LOGGER = "vllama.access"
ACCESS_FIELDS = (
    "request_id",
    "method",
    "route",
    "path",
    "model",
    "status",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "key",
    "client",
)

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class _TextFormatter(logging.Formatter):
    """Plain text, with the access fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={record.__dict__[k]}" for k in ACCESS_FIELDS if k in record.__dict__]
        return f"{line} {' '.join(extras)}" if extras else line


def make_formatter(fmt: Literal["json", "text"]) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(
            _JSON_FORMAT,
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )
    return _TextFormatter(_TEXT_FORMAT)


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Route `vllama.*` and uvicorn's loggers to one handler in `settings.log_format`
    (VLLAMA_LOG_FORMAT) at `settings.log_level`.

    uvicorn's own access log is silenced: the middleware writes a richer line.
    Returns the handler (tests capture it).
    """
    level = settings.log_level
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(settings.log_format))
    for name in ("vllama", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True
    return handler


_access = logging.getLogger(ACCESS_LOGGER)


def log_access(**fields: Any) -> None:
    """One line per request; `fields` are a subset of ACCESS_FIELDS."""
    if _access.isEnabledFor(logging.INFO):
        _access.info("request", extra=fields)
