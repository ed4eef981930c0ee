"""What every Ollama route shares: refusals as `{"error": ...}` answers, the JSON body,
NDJSON lines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from vllama import fastjson
from vllama.server.deps import get_settings, request_json
from vllama.server.errors import error_response, upstream_error_response
from vllama.server.jsonbody import InvalidJson
from vllama.translate import ModelTraits, TranslationError
from vllama.translate.fields import require_object
from vllama.upstream.errors import UpstreamError
from vllama.upstream.pool import ServedModel

API = "ollama"  # the `api` label of metrics
NDJSON = "application/x-ndjson"


class Refused(Exception):
    """An answer that is an error: status + Ollama message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def refusal(exc: Exception) -> Refused:
    """The answer for a refused request, a bad one or an engine failure; re-raises others."""
    if isinstance(exc, Refused):
        return exc
    if isinstance(exc, TranslationError):
        return Refused(400, exc.message)
    if isinstance(exc, UpstreamError):
        return Refused(exc.status, exc.message)
    raise exc


def error(request: Request, exc: Exception) -> Response:
    path = request.scope["path"]
    if isinstance(exc, UpstreamError):
        return upstream_error_response(path, exc)
    refused = refusal(exc)
    return error_response(path, refused.status, refused.message)


async def read_body(request: Request) -> dict[str, Any]:
    try:
        value = await request_json(request)
    except InvalidJson as exc:
        raise Refused(400, f"invalid JSON in request body: {exc.message}") from None
    if value is None:
        raise Refused(400, "missing request body")
    return require_object(value)


def traits(request: Request, card: ServedModel) -> ModelTraits:
    return ModelTraits(
        max_model_len=card.max_model_len,
        capabilities=card.capabilities,
        max_image_pixels=get_settings(request).max_image_pixels,
    )


def ndjson_line(obj: Mapping[str, Any]) -> bytes:
    return fastjson.dumps(obj) + b"\n"
