"""RequestContextMiddleware: the per-request work every route shares, as raw ASGI (no
BaseHTTPMiddleware: it is on every request and must stay in the microseconds).

In order: request id (X-Request-ID read or generated, returned, `request.state.request_id`),
body size limit (413), API key (401, `request.state.api_key`), and on inference routes the
per-client rate limit (429), per-key concurrency (429) and the bounded queue (503). At the
end of the response (streams included) one access-log line and `Metrics.observe_request`,
with the model and usage the route left in `request.state.model` / `.usage`.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

from vllama.config import ApiKey, Settings
from vllama.observability.logging import log_access
from vllama.observability.metrics import Metrics
from vllama.security.keys import KeyStore, Refused
from vllama.security.limits import (
    BUSY_MESSAGE,
    BUSY_RETRY_AFTER_S,
    AdmissionQueue,
    KeyConcurrency,
    RateLimiter,
    ServerBusyError,
    TrustedProxies,
    client_address,
    retry_after_header,
)
from vllama.server.errors import error_body_for_path, is_openai_path
from vllama.server.route_table import INFERENCE_ROUTES, KNOWN_ROUTES, OPEN_PATHS, PREFIX_ROUTES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Any path not in the route table is labelled "other": scanners cannot blow up cardinality.
OTHER_ROUTE = "other"


def route_label(path: str) -> str:
    if path in KNOWN_ROUTES:
        return path
    for prefix, label in PREFIX_ROUTES:
        if path.startswith(prefix):
            return label
    return OTHER_ROUTE


def api_label(path: str) -> str:
    if is_openai_path(path):
        return "openai"
    if path == "/" or path.startswith("/api/"):
        return "ollama"
    return "other"


# Echoed into headers and logs: bounded, visible ASCII only (no spaces, no control chars).
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


def _valid_request_id(value: str) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a body without Content-Length grows past the limit."""


class _BodyGuard:
    """Counts body bytes as the app reads them (chunked uploads have no Content-Length)."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.seen = 0
        self.exceeded = False

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.exceeded = True
                raise BodyTooLarge(413, _too_large_message(self.seen, self.limit))
        return message


def _too_large_message(size: int, limit: int) -> str:
    return (
        f"request body too large: {size} bytes, the limit is {limit} (max_body_bytes); "
        "send a smaller request or raise VLLAMA_MAX_BODY_BYTES"
    )


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        metrics: Metrics | None = None,
        keys: KeyStore | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.keys = keys if keys is not None else KeyStore()
        self.max_body = settings.max_body_bytes
        self.queue = AdmissionQueue(
            settings.max_in_flight,
            settings.max_queue,
            metrics.set_queued if metrics is not None else None,
        )
        self.key_limits = KeyConcurrency()
        self.rate: RateLimiter | None = (
            RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
            if settings.rate_limit_per_minute is not None
            else None
        )
        self.trusted = TrustedProxies(settings.trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path: str = scope["path"]
        request_id: str | None = None
        content_length: int | None = None
        forwarded_for: str | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _valid_request_id(candidate):
                    request_id = candidate
            elif name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = None
            elif name == b"x-forwarded-for":
                forwarded_for = value.decode("latin-1")
        if request_id is None:
            request_id = uuid.uuid4().hex
        rid_header = (b"x-request-id", request_id.encode())
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["api_key"] = None

        api = api_label(path)
        route = route_label(path)
        peer = scope.get("client")
        client = client_address(peer[0] if peer else None, forwarded_for, self.trusted)
        status = 0
        guard: _BodyGuard | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if guard is not None and guard.exceeded and status == 0:
                # The app answered its own way to BodyTooLarge; answer 413 in our shape.
                if message["type"] == "http.response.start":
                    status = 413
                    await self._send_error(send, path, 413, _too_large(guard), rid_header)
                return
            if status == 413 and guard is not None and guard.exceeded:
                return  # drop the app's body after our replacement
            if message["type"] == "http.response.start":
                status = message["status"]
                # Ours replaces any the engine echoed, so there is exactly one.
                message["headers"] = [
                    *(h for h in message.get("headers", ()) if h[0] != b"x-request-id"),
                    rid_header,
                ]
            await send(message)

        key: ApiKey | None = None
        try:
            if content_length is not None and content_length > self.max_body:
                status = 413
                await self._send_error(
                    send, path, 413, _too_large_message(content_length, self.max_body), rid_header
                )
                return
            if self.keys.enabled and path not in OPEN_PATHS:
                result = self.keys.authenticate(scope["headers"])
                if isinstance(result, Refused):
                    status = 401
                    if self.metrics is not None:
                        self.metrics.auth_failure(api)
                    await self._send_error(
                        send,
                        path,
                        401,
                        result.reason,
                        rid_header,
                        (b"www-authenticate", b"Bearer"),
                    )
                    return
                key = result
                state["api_key"] = key
            if content_length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                guard = _BodyGuard(receive, self.max_body)
                receive = guard
            if route in INFERENCE_ROUTES and scope["method"] == "POST":
                refused = await self._admit_and_run(
                    scope, receive, send, send_with_id, path, api, route, key, client, rid_header
                )
                if refused:
                    status = refused
            else:
                await self._run(scope, receive, send_with_id, api, route)
        except BodyTooLarge:
            if status == 0 and guard is not None:
                status = 413
                await self._send_error(send, path, 413, _too_large(guard), rid_header)
            elif status == 0:
                raise
        except asyncio.CancelledError:
            if status == 0:
                status = 499  # the client went away before an answer (nginx's convention)
            raise
        except BaseException:
            if status == 0:
                status = 500  # ServerErrorMiddleware (outside us) answers 500
            raise
        finally:
            self._finish(scope, state, start, api, route, status, key, client, request_id)

    async def _run(self, scope: Scope, receive: Receive, send: Send, api: str, route: str) -> None:
        if self.metrics is None:
            await self.app(scope, receive, send)
            return
        with self.metrics.track_in_flight(api, route):
            await self.app(scope, receive, send)

    async def _admit_and_run(
        self,
        scope: Scope,
        receive: Receive,
        raw_send: Send,
        send: Send,
        path: str,
        api: str,
        route: str,
        key: ApiKey | None,
        client: str,
        rid_header: tuple[bytes, bytes],
    ) -> int:
        """Rate limit, key concurrency, queue, then the app. Returns the refusal status or 0."""
        if self.rate is not None:
            wait = self.rate.hit(client)
            if wait > 0:
                retry = retry_after_header(wait)
                msg = (
                    f"rate limit exceeded: {self.settings.rate_limit_per_minute} requests per "
                    f"minute per client (burst {self.settings.rate_limit_burst}); "
                    f"retry after {retry} s"
                )
                await self._send_error(
                    raw_send, path, 429, msg, rid_header, (b"retry-after", retry.encode())
                )
                return 429
        if not self.key_limits.try_acquire(key):
            assert key is not None
            msg = (
                f"too many concurrent requests for API key '{key.name}' "
                f"(limit {key.max_concurrency}); wait for one to finish"
            )
            await self._send_error(raw_send, path, 429, msg, rid_header, (b"retry-after", b"1"))
            return 429
        try:
            try:
                await self.queue.acquire()
            except ServerBusyError:
                if self.metrics is not None:
                    self.metrics.queue_rejected()
                await self._send_error(
                    raw_send,
                    path,
                    503,
                    BUSY_MESSAGE,
                    rid_header,
                    (b"retry-after", str(BUSY_RETRY_AFTER_S).encode()),
                )
                return 503
            try:
                await self._run(scope, receive, send, api, route)
            finally:
                self.queue.release()
        finally:
            self.key_limits.release(key)
        return 0

    async def _send_error(
        self,
        send: Send,
        path: str,
        status: int,
        message: str,
        *extra_headers: tuple[bytes, bytes],
    ) -> None:
        body = error_body_for_path(path, status, message)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *extra_headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _finish(
        self,
        scope: Scope,
        state: dict[str, Any],
        start: float,
        api: str,
        route: str,
        status: int,
        key: ApiKey | None,
        client: str,
        request_id: str,
    ) -> None:
        elapsed = time.perf_counter() - start
        model = state.get("model")
        if not isinstance(model, str) or not model:
            model = "unknown" if route in INFERENCE_ROUTES else ""
        usage = state.get("usage")
        prompt_tokens, completion_tokens = usage if isinstance(usage, tuple) else (None, None)
        key_name = key.name if key is not None else "anonymous"
        if self.metrics is not None:
            self.metrics.observe_request(api, route, model, status, key_name, elapsed)
        log_access(
            request_id=request_id,
            method=scope["method"],
            route=route,
            path=scope["path"],
            model=model,
            status=status,
            latency_ms=round(elapsed * 1000, 3),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            key=key_name,
            client=client,
        )


def _too_large(guard: _BodyGuard) -> str:
    return _too_large_message(guard.seen, guard.limit)
