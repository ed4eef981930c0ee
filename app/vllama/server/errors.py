"""Error bodies in each API's own shape. Never a traceback, never an HTML page.

- Ollama (`/api/*`, `/`): `{"error": "<message>"}`
- OpenAI (`/v1/*`): `{"error": {"message", "type", "code", "param"}}`
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from vllama.upstream.errors import UpstreamError

log = logging.getLogger(__name__)

# OpenAI's `type` per status, as the OpenAI SDKs and vLLM use them.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "request_cancelled",
    503: "service_unavailable_error",
}


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1"


def ollama_error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def openai_error_body(
    status: int, message: str, *, type_: str | None = None, param: str | None = None
) -> bytes:
    err_type = type_ or _OPENAI_TYPES.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return json.dumps(
        {"error": {"message": message, "type": err_type, "code": status, "param": param}}
    ).encode()


def error_body_for_path(path: str, status: int, message: str, *, param: str | None = None) -> bytes:
    if is_openai_path(path):
        return openai_error_body(status, message, param=param)
    return ollama_error_body(message)


def error_response(
    path: str,
    status: int,
    message: str,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A JSON error response in the shape the path's API uses."""
    return Response(
        error_body_for_path(path, status, message, param=param),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def upstream_error_response(path: str, exc: UpstreamError) -> Response:
    """An engine-side failure: its status, message and field, and Retry-After when it has one."""
    return error_response(path, exc.status, exc.message, param=exc.param, headers=exc.headers())


# --- exception handlers (installed by server.app.create_app) ------------------------------

_V1_ROUTES = "/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models"


def _not_found_message(path: str) -> str:
    if is_openai_path(path):
        return f"unknown path {path}; this server answers {_V1_ROUTES}"
    return f"unknown path {path}; see the Ollama API reference for the supported routes"


def _field(loc: tuple[object, ...] | list[object]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def client_gone_response(path: str) -> Response:
    """The answer to a client that hung up while sending its body (nginx's 499)."""
    return error_response(path, 499, "request canceled")


def internal_error_response(request: Request, exc: Exception) -> Response:
    """A 500 in the path's shape for an unexpected exception; the log has the traceback."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    request_id = getattr(request.state, "request_id", None)
    ref = f" (request id {request_id})" if isinstance(request_id, str) else ""
    return error_response(
        request.url.path, 500, f"internal error{ref}; the server log has the details"
    )


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in the path's API shape: never a traceback, never HTML."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        path = request.url.path
        status = exc.status_code
        headers = dict(exc.headers or {})
        if status == 404:
            message = _not_found_message(path)
        elif status == 405:
            allowed = headers.get("Allow") or headers.get("allow")
            message = f"method {request.method} is not allowed on {path}" + (
                f"; use {allowed}" if allowed else ""
            )
        else:
            message = str(exc.detail)
        return error_response(path, status, message, headers=headers or None)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        first = errors[0] if errors else {}
        field = _field(first.get("loc", ()))
        reason = str(first.get("msg", "invalid request"))
        message = f"invalid field '{field}': {reason}" if field else f"invalid request: {reason}"
        return error_response(request.url.path, 400, message, param=field)

    async def upstream_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, UpstreamError)
        return upstream_error_response(request.url.path, exc)

    async def client_gone(request: Request, exc: Exception) -> Response:
        # The client hung up while sending its body (e.g. a proxy aborting an oversized
        # upload): nobody reads this answer, and it is not a server fault worth a traceback.
        log.debug("client disconnected while sending %s %s", request.method, request.url.path)
        return client_gone_response(request.url.path)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return internal_error_response(request, exc)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(UpstreamError, upstream_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, internal_error)
