"""Error bodies in each API's own shape. Never a traceback, never an HTML page.

- Ollama (`/api/*`, `/`): `{"error": "<message>"}`
- OpenAI (`/v1/*`): `{"error": {"message", "type", "code", "param"}}`
"""

from __future__ import annotations

import json

from starlette.responses import Response

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
