"""Log lines: JSON (python-json-logger) or text, with the access fields and nothing else."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from vllama.config import Settings
from vllama.observability.logging import ACCESS_FIELDS, configure_logging, log_access

FIELDS = {
    "request_id": "abc123",
    "method": "POST",
    "route": "/api/chat",
    "path": "/api/chat",
    "model": "vllama-demo",
    "status": 200,
    "latency_ms": 12.5,
    "prompt_tokens": 9,
    "completion_tokens": 4,
    "key": "alice",
    "client": "127.0.0.1",
}


@pytest.fixture
def restore_loggers() -> Iterator[None]:
    names = ("vllama", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {
        n: (
            logging.getLogger(n).handlers[:],
            logging.getLogger(n).level,
            logging.getLogger(n).propagate,
            logging.getLogger(n).disabled,
        )
        for n in names
    }
    yield
    for n, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(n)
        logger.handlers, logger.level, logger.propagate, logger.disabled = (
            handlers,
            level,
            propagate,
            disabled,
        )


@pytest.mark.usefixtures("restore_loggers")
def test_json_access_line_has_every_field() -> None:
    out = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=out)
    log_access(**FIELDS)
    line = json.loads(out.getvalue().strip())
    assert {k: line[k] for k in ACCESS_FIELDS} == FIELDS
    assert line["logger"] == "vllama.access" and line["level"] == "INFO" and "time" in line


@pytest.mark.usefixtures("restore_loggers")
def test_text_format_is_one_readable_line() -> None:
    out = io.StringIO()
    configure_logging(Settings(log_format="text"), stream=out)
    log_access(**FIELDS)
    text = out.getvalue()
    assert text.count("\n") == 1
    assert "vllama.access: request" in text and "status=200" in text and "key=alice" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.usefixtures("restore_loggers")
def test_level_filters_and_uvicorn_access_is_silenced() -> None:
    out = io.StringIO()
    configure_logging(Settings(log_format="json", log_level="warning"), stream=out)
    log_access(**FIELDS)
    logging.getLogger("uvicorn.access").warning("GET / 200")
    logging.getLogger("vllama.upstream").warning("engine down")
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["message"] for x in lines] == ["engine down"]


FORGED = "/api/x\nINFO vllama.access: request status=200 key=admin\r\u2028\x85\x1b[31m"


@pytest.mark.usefixtures("restore_loggers")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_request_field_can_forge_a_line(fmt: str) -> None:
    # Issue 13: `GET /api/x%0AINFO ...` wrote a second, forged line in the text format.
    out = io.StringIO()
    configure_logging(Settings(log_format=fmt), stream=out)  # type: ignore[arg-type]
    log_access(**{**FIELDS, "path": FORGED, "model": "m\x00\x7f"})
    logging.getLogger("vllama.server").warning("engine said %s", FORGED)
    text = out.getvalue()
    assert text.count("\n") == 2 and len(text.splitlines()) == 2  # splitlines knows U+2028
    for ch in "\r\x85\u2028\x1b\x00\x7f":
        assert ch not in text
    if fmt == "json":
        first, second = (json.loads(line) for line in text.splitlines())
        assert first["path"] == FORGED and second["message"] == f"engine said {FORGED}"
    else:
        assert "path=/api/x\\x0aINFO" in text


@pytest.mark.usefixtures("restore_loggers")
def test_a_traceback_in_text_cannot_pass_for_a_record() -> None:
    out = io.StringIO()
    configure_logging(Settings(log_format="text"), stream=out)
    try:
        raise ValueError("bad\n2026-01-01 00:00:00,000 INFO vllama.access: request forged")
    except ValueError:
        logging.getLogger("vllama.server").exception("failed")
    first, *rest = out.getvalue().splitlines()
    assert first.endswith("failed") and rest
    assert all(line.startswith("  | ") for line in rest)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_on_a_terminal_and_json_otherwise() -> None:
    """`vllama serve` on a terminal: readable lines, each clearing the spinner's line
    first; anything else (systemd, compose, a pipe) gets JSON lines."""
    term = _Terminal()
    configure_logging(Settings(log_format="auto"), stream=term)
    logging.getLogger("vllama.test").info("model %s ready", "org/a")
    line = term.getvalue()
    assert line.startswith("\r\x1b[K") and "INFO vllama.test: model org/a ready" in line
    pipe = io.StringIO()
    configure_logging(Settings(log_format="auto"), stream=pipe)
    logging.getLogger("vllama.test").info("model %s ready", "org/a")
    assert json.loads(pipe.getvalue())["message"] == "model org/a ready"
    forced = _Terminal()
    configure_logging(Settings(log_format="json"), stream=forced)  # always selectable
    logging.getLogger("vllama.test").info("x")
    assert json.loads(forced.getvalue().removeprefix("\r\x1b[K"))["message"] == "x"


def test_the_access_line_short_path_writes_what_python_json_logger_writes() -> None:
    # The JSON formatter builds the access line itself (known fields); the generic path of
    # python-json-logger must read back the same, odd characters and all.
    from vllama.observability.logging import ACCESS_LOGGER, make_formatter

    fields = {**FIELDS, "path": "/api/x\n\u2028\x85\x7f", "prompt_tokens": None}
    formatter = make_formatter("json")
    record = logging.getLogger(ACCESS_LOGGER).makeRecord(
        ACCESS_LOGGER, logging.INFO, "", 0, "request", (), None, extra=fields
    )
    short = formatter.format(record)
    generic = type(formatter).__mro__[1].format(formatter, record)  # python-json-logger's
    assert short != generic or "\n" not in short
    assert json.loads(short) == json.loads(generic)
    assert "\n" not in short and "\u2028" not in short and "\x85" not in short
