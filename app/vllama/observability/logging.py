"""Logging setup: JSON lines (python-json-logger) or plain text, and the access line.

The access logger only ever receives the fields listed in `ACCESS_FIELDS`; prompts,
completions and API keys never reach a log record (the key's *name* does).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from typing import IO, Any, Literal

from pythonjsonlogger.json import JsonFormatter

from vllama import fastjson
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


# Characters that end or corrupt a log line in some reader: C0 and C1 controls, DEL and
# the Unicode line/paragraph separators (str.splitlines() and JavaScript split on them).
# A request path or header with `%0A` must not be able to forge a line.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_char(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` with every unsafe character written as a visible escape (`\\x0a`)."""
    return _UNSAFE.sub(_escape_char, text)


def _escape_json(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def _continuation(text: str) -> str:
    """A traceback's lines, each escaped and marked, so none can pass for a record."""
    return "\n".join(f"  | {escape_controls(line)}" for line in text.split("\n"))


class _TextFormatter(logging.Formatter):
    """Plain text, with the access fields appended as key=value. The line itself is
    escaped; a traceback follows on lines of its own, each starting with `  | `."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _continuation(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _continuation(super().formatStack(stack_info))

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [
            f"{k}={escape_controls(str(record.__dict__[k]))}"
            for k in ACCESS_FIELDS
            if k in record.__dict__
        ]
        if not extras:
            return text
        line, nl, rest = text.partition("\n")
        return f"{line} {' '.join(extras)}{nl}{rest}"


def _compact_dumps(obj: Any, **options: Any) -> str:
    return json.dumps(obj, **options, separators=(",", ":"))


@functools.lru_cache(maxsize=4)
def _local_second(second: int) -> str:
    return time.strftime(logging.Formatter.default_time_format, time.localtime(second))


class _JsonFormatter(JsonFormatter):
    """JSON escapes C0 controls itself; DEL, C1 controls and U+2028/2029 are written as
    \\u escapes too, so that no reader splits or garbles a line.

    The access line (one per request) takes a short path to the same text: its fields
    are known, so python-json-logger's walk over every record attribute is skipped.
    """

    def format(self, record: logging.LogRecord) -> str:
        if record.name != ACCESS_LOGGER or record.exc_info or record.stack_info or record.args:
            return super().format(record)
        fields = record.__dict__
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.msg,
        }
        for key in ACCESS_FIELDS:
            if key in fields:
                line[key] = fields[key]
        return _UNSAFE.sub(_escape_json, fastjson.dumps(line).decode())

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        # logging's default format: "%Y-%m-%d %H:%M:%S,mmm"
        return f"{_local_second(int(record.created))},{int(record.msecs):03d}"

    def jsonify_log_record(self, log_record: Any) -> str:
        return _UNSAFE.sub(_escape_json, str(super().jsonify_log_record(log_record)))


def make_formatter(fmt: Literal["json", "text"]) -> logging.Formatter:
    if fmt == "json":
        return _JsonFormatter(
            _JSON_FORMAT,
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
            json_serializer=_compact_dumps,  # the access line's separators (fastjson)
        )
    return _TextFormatter(_TEXT_FORMAT)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real file
        return False


def resolve_format(
    fmt: Literal["auto", "json", "text"], stream: IO[str]
) -> Literal["json", "text"]:
    """`auto`: text for a person at a terminal, JSON lines for everything that reads logs."""
    if fmt == "auto":
        return "text" if _is_terminal(stream) else "json"
    return fmt


class _TerminalHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """On a terminal, each record first clears the line: `vllama serve`'s spinner (a line
    redrawn with \r) is wiped instead of having a log line glued to its end."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.write("\r\x1b[K")
        super().emit(record)


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Route `vllama.*` and uvicorn's loggers to one handler in `settings.log_format`
    (VLLAMA_LOG_FORMAT; `auto`: text on a terminal, JSON otherwise) at `settings.log_level`.

    uvicorn's own access log is silenced: the middleware writes a richer line.
    Returns the handler (tests capture it).
    """
    level = settings.log_level
    out = stream if stream is not None else sys.stderr
    handler: logging.Handler = (
        _TerminalHandler(out) if _is_terminal(out) else logging.StreamHandler(out)
    )
    handler.setFormatter(make_formatter(resolve_format(settings.log_format, out)))
    for name in ("vllama", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True
    return handler


_access = logging.getLogger(ACCESS_LOGGER)


def log_access(**fields: Any) -> None:
    """One line per request; `fields` are a subset of ACCESS_FIELDS, in that order. The
    record is made directly: Logger.info would look up the caller's frame, unused here."""
    if _access.isEnabledFor(logging.INFO):
        record = _access.makeRecord(
            ACCESS_LOGGER, logging.INFO, "", 0, "request", (), None, extra=fields
        )
        _access.handle(record)
