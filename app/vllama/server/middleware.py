"""RequestContextMiddleware: the per-request work every route shares, as raw ASGI (no
BaseHTTPMiddleware: it is on every request and must stay in the microseconds).

In order: request id (X-Request-ID read or generated, returned, `request.state.request_id`),
body size limit from Content-Length (413), the browser guard (Host and Origin, 403;
CORS preflights answered), API key (401, `request.state.api_key`) and its role (403 for
administrative routes without an admin key), then the body, read whole and bounded in
size and time (413, 408) before anything is admitted, parsed once as JSON (400;
`request.state.json`), and on inference routes the request's cost (400), the per-client
rate limit (429), per-key concurrency counted in sequences (429) and the bounded queue
(503). An inference request whose client leaves before its answer started is cancelled
(its upstream request with it). At the end of the response (streams included) one
access-log line and `Metrics.observe_request`, with the model and usage the route left in
`request.state.model` / `.usage`. Every 503 carries Retry-After.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from vllama.config import ApiKey, Settings
from vllama.observability.logging import log_access
from vllama.observability.metrics import Metrics
from vllama.security.browser import (
    HostPolicy,
    OriginPolicy,
    cors_headers,
    is_loopback,
    preflight_headers,
)
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
from vllama.security.shared import SharedLimits
from vllama.server import jsonbody
from vllama.server.body import BodyError, ClientGone, Replay, read_body, too_large_message
from vllama.server.cost import Bounds, TooCostly, request_weight
from vllama.server.errors import error_body_for_path, is_openai_path
from vllama.server.route_table import (
    ADMIN_ROUTES,
    INFERENCE_ROUTES,
    KNOWN_ROUTES,
    OPEN_PATHS,
    PREFIX_ROUTES,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Any path not in the route table is labelled "other": scanners cannot blow up cardinality.
OTHER_ROUTE = "other"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Bodies larger than this are parsed in a worker thread: the event loop keeps serving.
_PARSE_INLINE_MAX = 1024 * 1024


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


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        metrics: Metrics | None = None,
        keys: KeyStore | None = None,
        shared_limits: SharedLimits | None = None,
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
        # Per worker process: the queue. Across workers (shared_limits): keys and rates.
        self.key_limits = KeyConcurrency(shared_limits)
        self.rate: RateLimiter | None = (
            RateLimiter(
                settings.rate_limit_per_minute, settings.rate_limit_burst, shared=shared_limits
            )
            if settings.rate_limit_per_minute is not None
            else None
        )
        self.trusted = TrustedProxies(settings.trusted_proxies)
        # Ollama checks Host only when it listens on a loopback address (DNS rebinding).
        self.hosts = HostPolicy(settings.allowed_hosts) if is_loopback(settings.host) else None
        self.origins = OriginPolicy(settings.allowed_origins)
        self.bounds = Bounds(settings.max_messages, settings.max_images, settings.max_choices)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        request_id: str | None = None
        content_length: int | None = None
        chunked = False
        forwarded: list[str] = []
        host = ""
        origin: str | None = None
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
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
            elif name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
        if request_id is None:
            request_id = uuid.uuid4().hex
        rid_header = (b"x-request-id", request_id.encode())
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["api_key"] = None

        api = api_label(path)
        route = route_label(path)
        peer = scope.get("client")
        client = client_address(
            peer[0] if peer else None, ",".join(forwarded) if forwarded else None, self.trusted
        )
        status = 0
        replay: Replay | None = None
        extra_headers: list[tuple[bytes, bytes]] = []
        server_send = send  # the app's messages go straight to the server: one wrapper

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                if replay is not None:
                    replay.answered = True  # a disconnect now cancels nothing
                status = message["status"]
                # Ours replaces any the engine echoed, so there is exactly one.
                headers = [
                    *(h for h in message.get("headers", ()) if h[0] != b"x-request-id"),
                    rid_header,
                    *extra_headers,
                ]
                if status == 503 and not any(h[0].lower() == b"retry-after" for h in headers):
                    headers.append((b"retry-after", str(BUSY_RETRY_AFTER_S).encode()))
                message["headers"] = headers
            await server_send(message)

        async def refuse(code: int, message: str, *headers: tuple[bytes, bytes]) -> None:
            nonlocal status
            status = code
            await self._send_error(send, path, code, message, rid_header, *extra_headers, *headers)

        key: ApiKey | None = None
        try:
            if content_length is not None and content_length > self.max_body:
                await refuse(413, too_large_message(content_length, self.max_body))
                return
            if self.hosts is not None and not self.hosts.allows(host):
                await refuse(403, _HOST_REFUSED)
                return
            if origin is not None:
                if not self.origins.allows(origin, host):
                    await refuse(403, _ORIGIN_REFUSED)
                    return
                extra_headers = cors_headers(origin)
                if method == "OPTIONS":  # a CORS preflight: no key, no body
                    status = 204
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 204,
                            "headers": [rid_header, *preflight_headers(origin)],
                        }
                    )
                    await send({"type": "http.response.body", "body": b""})
                    return
            if self.keys.enabled:
                result = self.keys.authenticate(scope["headers"])
                if isinstance(result, Refused):
                    if path not in OPEN_PATHS:
                        if self.metrics is not None:
                            self.metrics.auth_failure(api)
                        await refuse(401, result.reason, (b"www-authenticate", b"Bearer"))
                        return
                else:  # open paths take a key too: /health/ready shows details to it
                    key = result
                    state["api_key"] = key
            # Who may see details (engines, models): anyone while keys are off.
            state["authenticated"] = key is not None or not self.keys.enabled
            if route in ADMIN_ROUTES and not self.keys.is_admin(key):
                await refuse(403, self._not_admin(key))
                return
            body = b""
            if method in _BODY_METHODS and (chunked or content_length):
                body = await read_body(receive, self.max_body, self.settings.body_timeout_s)
                replay = Replay(body, receive)
                receive = replay
                send = replay.tracking(send)  # refusals; send_with_id notes the app's answer
            parsed: Any = None
            if body and _is_json_route(path):
                try:
                    parsed = await self._parse(body)
                except jsonbody.InvalidJson as exc:
                    await refuse(400, f"invalid JSON in request body: {exc.message}")
                    return
                state["json"] = parsed
                state["body"] = body  # what /v1 forwards when it passes unchanged
            if route in INFERENCE_ROUTES and method == "POST":
                try:
                    weight = request_weight(route, parsed, self.bounds)
                except TooCostly as exc:
                    status = 400
                    body_ = error_body_for_path(path, 400, exc.message, param=exc.field)
                    await self._send_raw(send, 400, body_, rid_header, *extra_headers)
                    return
                if replay is not None:
                    replay.watch(asyncio.current_task())
                refused = await self._admit_and_run(
                    scope,
                    receive,
                    send,
                    send_with_id,
                    path,
                    api,
                    route,
                    key,
                    client,
                    weight,
                    rid_header,
                )
                if replay is not None:
                    replay.answered = True  # done: a disconnect now cancels nothing
                if refused:
                    status = refused
            else:
                await self._run(scope, receive, send_with_id, api, route)
        except BodyError as exc:
            if status == 0:
                await refuse(exc.status, exc.message)
        except ClientGone:
            if status == 0:
                status = 499  # the client went away before an answer (nginx's convention)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if replay is not None and replay.cancelled_app and task is not None:
                # Our own cancel: the client left before the answer; its work is stopped.
                task.uncancel()
                if status == 0:
                    status = 499
            else:
                if status == 0:
                    status = 499
                raise
        except BaseException:
            if status == 0:
                status = 500  # ServerErrorMiddleware (outside us) answers 500
            raise
        finally:
            if replay is not None:
                replay.close()
            self._finish(scope, state, start, api, route, status, key, client, request_id)

    def _not_admin(self, key: ApiKey | None) -> str:
        if not self.keys.has_admins:
            return (
                "this operation changes the model store or routing and needs an admin key, "
                "and none is configured: set admin_keys (VLLAMA_ADMIN_KEYS), or run it on "
                "the server with the vllama command"
            )
        who = f"API key '{key.name}'" if key is not None else "this request"
        return (
            f"{who} may run models and read, not change the model store or routing: "
            "send an admin key (admin_keys)"
        )

    async def _parse(self, body: bytes) -> Any:
        if len(body) <= _PARSE_INLINE_MAX:
            return jsonbody.loads(body)
        return await asyncio.to_thread(jsonbody.loads, body)

    async def _run(self, scope: Scope, receive: Receive, send: Send, api: str, route: str) -> None:
        if self.metrics is None:
            await self.app(scope, receive, send)
            return
        gauge = self.metrics.in_flight_gauge(api, route)
        gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            gauge.dec()

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
        weight: int,
        rid_header: tuple[bytes, bytes],
    ) -> int:
        """Rate limit, key concurrency (`weight` sequences), queue, then the app. Returns
        the refusal status or 0."""
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
        if not self.key_limits.try_acquire(key, weight):
            assert key is not None
            if key.max_concurrency is not None and weight > key.max_concurrency:
                msg = (
                    f"this request asks for {weight} sequences at once (n, best_of, batched "
                    f"prompts), more than API key '{key.name}' may run "
                    f"(limit {key.max_concurrency}); split it into smaller requests"
                )
                await self._send_error(raw_send, path, 429, msg, rid_header)
                return 429
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
            self.key_limits.release(key, weight)
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
        await self._send_raw(send, status, body, *extra_headers)

    @staticmethod
    async def _send_raw(
        send: Send, status: int, body: bytes, *extra_headers: tuple[bytes, bytes]
    ) -> None:
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


_HOST_REFUSED = (
    "this request's Host header names a host that is not allowed while vllama listens on "
    "the loopback (a guard against DNS rebinding from web pages); add the name to "
    "allowed_hosts (VLLAMA_ALLOWED_HOSTS)"
)
_ORIGIN_REFUSED = (
    "requests from this web origin are not allowed (a guard against web pages calling the "
    "server); add the origin to allowed_origins (VLLAMA_ALLOWED_ORIGINS, like OLLAMA_ORIGINS)"
)


def _is_json_route(path: str) -> bool:
    """Routes whose bodies are JSON: every /api and /v1 route but blob uploads."""
    return (path.startswith("/api/") and not path.startswith("/api/blobs/")) or path.startswith(
        "/v1/"
    )
