"""The OpenAI API (`/v1/*`): an allowlist of vLLM routes passed through byte for byte.

The request body is parsed once, to resolve `model` (aliases included) and rewrite it to
the engine's id (a body that needs no change goes out as the client's bytes); the answer (JSON or SSE) is streamed back untouched as the network
delivers it. Only the paths of server.route_table exist: vLLM checks keys on some of its
paths only, so nothing else is forwarded (anything else under /v1 is a 404 in OpenAI's shape).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vllama import fastjson
from vllama.server.deps import (
    acquire_model,
    get_metrics,
    get_pool,
    get_settings,
    is_large,
    raw_json_body,
    record_usage,
    request_json,
    set_priority,
    upstream_headers,
)
from vllama.server.errors import error_response, openai_error_body, upstream_error_response
from vllama.server.jsonbody import InvalidJson
from vllama.server.streaming import ProxyStream
from vllama.translate.errors import TranslationError
from vllama.translate.images import check_media_parts
from vllama.upstream.balancer import affinity_key
from vllama.upstream.errors import UpstreamError
from vllama.upstream.pool import ServedModel
from vllama.upstream.usage import UsageTail

API = "openai"  # the `api` label of metrics
# Response headers that describe the engine's connection, not the content.
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}
)


def _bad_request(path: str, message: str, param: str | None = None) -> Response:
    return error_response(path, 400, message, param=param)


_NUMBER = (int, float)
# Top-level fields checked here so a wrong type is a 400 that names the field (vLLM's own
# message for some of them is a Python error text). None is allowed: OpenAI sends nulls.
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a string"),
    "stream": ((bool,), "a boolean"),
    "messages": ((list,), "an array of messages"),
    "prompt": ((str, list), "a string or an array"),
    "input": ((str, list), "a string or an array"),
    "max_tokens": ((int,), "an integer"),
    "max_completion_tokens": ((int,), "an integer"),
    "n": ((int,), "an integer"),
    "temperature": (_NUMBER, "a number"),
    "top_p": (_NUMBER, "a number"),
    "stop": ((str, list), "a string or an array of strings"),
    "stream_options": ((dict,), "an object"),
    "tools": ((list,), "an array"),
}
_REQUIRED = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
}


def _type_problem(route: str, body: dict[str, Any]) -> tuple[str, str] | None:
    """(message, field) for the first field of a wrong type, or a missing required one."""
    required = _REQUIRED.get(route)
    if required is not None and body.get(required) is None:
        return f"field '{required}' is required", required
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "field 'model' is required and must be a non-empty string", "model"
    for field, (types, what) in _FIELD_TYPES.items():
        value = body.get(field)
        if value is None:
            continue
        bad_bool = isinstance(value, bool) and bool not in types
        if bad_bool or not isinstance(value, types):
            return f"field '{field}' must be {what}, not {type(value).__name__}", field
    return None


async def _media_problem(request: Request, messages: Any) -> TranslationError | None:
    """Images, audio and video parts checked (images.check_media_parts); large bodies
    off the event loop (decoding megabytes of base64)."""
    max_pixels = get_settings(request).max_image_pixels
    try:
        if is_large(request):
            await asyncio.to_thread(check_media_parts, messages, max_pixels)
        else:
            check_media_parts(messages, max_pixels)
    except TranslationError as exc:
        return exc
    return None


def _encode(body: dict[str, Any]) -> bytes:
    return fastjson.dumps(body)


async def forward(request: Request, *, route: str) -> Response:
    """One inference request passed through."""
    start = time.perf_counter()
    path: str = request.scope["path"]
    try:
        body: Any = await request_json(request)
    except InvalidJson as exc:
        return _bad_request(path, f"invalid JSON body: {exc.message}; send a JSON object")
    if not isinstance(body, dict):
        return _bad_request(path, "the request body must be a JSON object")
    problem = _type_problem(route, body)
    if problem is not None:
        return _bad_request(path, *problem)
    if route == "/v1/chat/completions":
        media = await _media_problem(request, body.get("messages"))
        if media is not None:
            return _bad_request(path, media.message, media.field)
    name: str = body["model"]
    stream = body.get("stream") is True
    pool = get_pool(request)
    metrics = get_metrics(request)
    try:
        model = await acquire_model(request, name)
    except UpstreamError as exc:
        return upstream_error_response(path, exc)
    sent_priority = "priority" in body
    body["model"] = model.id
    set_priority(request, body)
    raw = raw_json_body(request)
    headers = {
        "Content-Type": "application/json",
        "Accept": request.headers.get("accept", "*/*"),
        **upstream_headers(request),
    }
    if raw is not None and model.id == name and not sent_priority and "priority" not in body:
        data = raw  # nothing to change: the client's bytes, not encoded again
    elif is_large(request):  # encoding megabytes: off the event loop
        data = await asyncio.to_thread(_encode, body)
    else:
        data = _encode(body)
    # Replicas: keep the conversation where its prefix is cached (balancer.py).
    affinity = (
        affinity_key(body) if len(model.engine_urls) > 1 and route != "/v1/embeddings" else None
    )
    own = time.perf_counter() - start

    stack = AsyncExitStack()
    try:
        upstream = await stack.enter_async_context(
            pool.forward(model, "POST", path, data, headers, affinity)
        )
    except BaseException as exc:
        await stack.aclose()
        if isinstance(exc, UpstreamError):
            return upstream_error_response(path, exc)
        raise

    out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
    if stream:
        out_headers["X-Accel-Buffering"] = "no"
        out_headers["Cache-Control"] = "no-cache"
    timer = (
        metrics.stream_timer(API, route, model.id, start)
        if metrics is not None and stream and upstream.status < 400
        else None
    )
    tail = UsageTail()

    async def chunks() -> AsyncGenerator[bytes, None]:
        # Whatever arrived since the last read goes out as one chunk: under load a read
        # holds several events.
        read, keep = upstream.read, tail.feed
        try:
            while chunk := await read():
                if timer is not None:
                    timer.chunk(time.perf_counter())
                keep(chunk)
                yield chunk
        except UpstreamError as exc:  # the status is sent: the error is the stream's end
            if stream:
                yield b"data: " + openai_error_body(exc.status, exc.message) + b"\n\n"

    async def finish() -> None:
        if timer is not None:
            timer.close()
        await stack.aclose()
        t = time.perf_counter()
        usage = tail.usage() if upstream.status < 400 else None
        if usage is not None:
            record_usage(request, model.id, *usage)
        if metrics is not None:
            metrics.observe_overhead(API, route, own + time.perf_counter() - t)

    return ProxyStream(chunks(), status_code=upstream.status, headers=out_headers, on_close=finish)


async def chat_completions(request: Request) -> Response:
    return await forward(request, route="/v1/chat/completions")


async def completions(request: Request) -> Response:
    return await forward(request, route="/v1/completions")


async def embeddings(request: Request) -> Response:
    return await forward(request, route="/v1/embeddings")


def _card(id_: str, model: ServedModel, *, alias_of: str | None = None) -> dict[str, Any]:
    return {
        "id": id_,
        "object": "model",
        "created": model.created,
        "owned_by": "vllama",
        "root": model.root or model.id,
        "parent": alias_of,
        "max_model_len": model.max_model_len,
    }


def _cards(request: Request) -> list[dict[str, Any]]:
    """Served models, then each alias whose target is served."""
    pool = get_pool(request)
    models = {m.id: m for m in pool.models()}
    cards = [_card(m.id, m) for m in models.values()]
    for alias, target in pool.aliases.items():
        if target in models and alias not in models:
            cards.append(_card(alias, models[target], alias_of=target))
    return cards


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": _cards(request)})


async def retrieve_model(request: Request, model_id: str) -> Response:
    for card in _cards(request):
        if card["id"] == model_id:
            return JSONResponse(card)
    try:
        model = get_pool(request).resolve(model_id)
    except UpstreamError as exc:
        return upstream_error_response(request.url.path, exc)
    return JSONResponse(_card(model_id, model, alias_of=None if model_id == model.id else model.id))
