"""GET /openapi.json: vllama's OpenAPI document (server/openapi.py), when `openapi = true`."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vllama.server.deps import get_settings
from vllama.server.errors import error_response
from vllama.server.openapi import document


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    return document()


async def openapi_json(request: Request) -> Response:
    if not get_settings(request).openapi:
        return error_response(
            request.url.path, 404, "the OpenAPI document is off: set openapi = true to serve it"
        )
    return JSONResponse(_document())
