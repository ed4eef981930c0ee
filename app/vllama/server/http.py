"""The façade's HTTP/1.1 server: uvicorn with httptools, guarded against slow and greedy
clients, because the façade is reachable without the proxy.

uvicorn's httptools protocol has no limit on header size or count, no timeout for a
request's headers (a connection that never sends anything is held forever), and a
connection limit (`limit_concurrency`) that answers in plain text. llhttp buffers an
unfinished header whole, so a client that sends megabytes of one header line grows the
process without bound. None of this can be set from uvicorn's options, so
`GuardedHttpToolsProtocol` (a subclass) adds, per connection:

- a header timeout (`header_timeout_s`): from the connection's start, or a keep-alive
  request's first byte, to the end of its headers; 408 (or a silent close if nothing
  arrived), then the connection is closed;
- limits on header bytes (`max_header_bytes`, request line included) and header count
  (`max_headers`): 431. An unfinished header is cut off once the bytes fed to the parser
  pass the limit (at most one read more is buffered), so memory stays bounded;
- a connection cap (`max_connections`): 503 with Retry-After, in the API's shape;
- uvicorn's own idle keep-alive timeout (`keep_alive_s`).

Bodies are the middleware's (server/body.py): it reads each body, bounded in size and
time (413, 408), before a request is admitted to the queue.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vllama.config import Settings
from vllama.server.errors import error_body_for_path

log = logging.getLogger(__name__)

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
RETRY_AFTER_BUSY_S = 2


def error_response_bytes(path: str, status: int, message: str, *extra: bytes) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection."""
    body = error_body_for_path(path, status, message)
    head = [
        b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error")),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        *extra,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _error_app(status: int, message: str, *extra: tuple[bytes, bytes]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = error_body_for_path(scope.get("path", "/"), status, message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits, a header timeout and a connection
    cap. The limits are class attributes, set by `protocol_class(settings)`."""

    max_header_bytes = 64 * 1024
    max_headers = 100
    header_timeout_s = 10.0
    max_connections = 2048

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_headers = True  # between two requests counts as reading headers
        self._started = False  # a byte of the current request has arrived
        self._fed = 0  # bytes fed to the parser while its headers were unfinished
        self._header_bytes = 0  # request line and headers of the current request, exactly
        self._header_count = 0
        self._too_large: str | None = None
        self._header_timer: asyncio.TimerHandle | None = None

    # --- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._reading_headers and self._header_timer is None:
            self._arm_header_timer()  # a keep-alive connection's next request begins
        try:
            self.parser.feed_data(data)
        except Exception as exc:
            if isinstance(exc, httptools.HttpParserUpgrade):
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            if not isinstance(exc, httptools.HttpParserError):
                raise
            log.debug("invalid HTTP request from %s: %s", self.client, exc)
            self._refuse(400, "invalid HTTP request: the request line or headers are malformed")
            return
        if self._reading_headers and self._started and not self.transport.is_closing():
            self._fed += len(data)
            if self._fed > self.max_header_bytes:
                # llhttp keeps an unfinished header in memory: stop before it grows further.
                self._refuse(431, self._size_message())

    # --- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._started = True
        self._fed = 0
        self._header_bytes = 0
        self._header_count = 0
        self._too_large = None
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header_bytes:
            self._too_large = self._size_message()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        self._header_count += 1
        if self._too_large is not None:
            return  # refused anyway: keep nothing more
        if self._header_count > self.max_headers:
            self._too_large = (
                f"too many header fields: more than {self.max_headers} (max_headers); "
                "send fewer headers"
            )
        elif self._header_bytes > self.max_header_bytes:
            self._too_large = self._size_message()
        else:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._reading_headers = False
        self._started = False
        app = self.app
        if self._too_large is not None:
            self.app = _error_app(431, self._too_large)
        elif len(self.connections) > self.max_connections:
            self.app = _error_app(
                503,
                f"too many open connections (max_connections {self.max_connections}); "
                "retry shortly",
                (b"retry-after", str(RETRY_AFTER_BUSY_S).encode()),
            )
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_headers = True  # the next request's headers, if any, come next

    # --- refusals and the header timer --------------------------------------------------

    def _size_message(self) -> str:
        return (
            f"request headers too large: more than {self.max_header_bytes} bytes "
            "(max_header_bytes); send smaller headers"
        )

    def _path(self) -> str:
        url = getattr(self, "url", b"") or b"/"
        return url.split(b"?", 1)[0].decode("latin-1")

    def _refuse(self, status: int, message: str, *extra: bytes) -> None:
        """Answer before the app ran (when no answer is under way) and close."""
        self._cancel_header_timer()
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(error_response_bytes(self._path(), status, message, *extra))
        self.transport.close()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._reading_headers:
            return
        if not self._started:  # nothing of a request arrived: an idle connection
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()
            return
        self._refuse(
            408,
            f"request headers not received within {self.header_timeout_s:g} s "
            "(header_timeout_s); send the whole request at once",
        )


def protocol_class(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol with `settings`' limits (uvicorn instantiates the class itself)."""
    return type(
        "VllamaHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "max_header_bytes": settings.max_header_bytes,
            "max_headers": settings.max_headers,
            "header_timeout_s": settings.header_timeout_s,
            "max_connections": settings.max_connections,
        },
    )


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The one uvicorn configuration: `vllama serve` and the tests' façade use it alike."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": protocol_class(settings),
        "lifespan": "on",
        "workers": 1,
        "access_log": False,  # the request middleware logs each request once
        "timeout_keep_alive": settings.keep_alive_s,
        "server_header": False,  # no version banner
        # X-Forwarded-For is the middleware's (trusted_proxies, bounded hops); uvicorn's
        # own rewrite of the client address would come first and ignore that setting.
        "proxy_headers": False,
        **overrides,
    }
    return uvicorn.Config(app, **options)
