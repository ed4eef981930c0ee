"""/api/embed (batch, Ollama's current API) and /api/embeddings (one prompt, the legacy one)."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vllama.server.deps import (
    acquire_model,
    get_pool,
    is_large,
    record_usage,
    set_priority,
    upstream_headers,
)
from vllama.server.routes.ollama.plumbing import Refused, error, read_body
from vllama.translate import Timings
from vllama.translate import requests as to_openai
from vllama.translate import responses as to_ollama
from vllama.translate.fields import keep_alive_seconds, model_name, opt_str
from vllama.upstream.pool import ServedModel


def _require_embedding(card: ServedModel, name: str) -> None:
    if "embedding" not in card.capabilities:
        raise Refused(
            400,
            f'"{name}" does not support embeddings: use an embedding model '
            "(served with vLLM's --runner pooling)",
        )


async def embed(request: Request) -> Response:
    start = time.perf_counter_ns()
    try:
        body = await read_body(request)
        name = model_name(body)
        card = await acquire_model(request, name, keep_alive_seconds(body))
        _require_embedding(card, name)
        # Ollama answers an empty input without work.
        call = to_openai.embed_request(body) if to_openai.embed_inputs(body) else None
        answer: Any = {}
        sent = time.perf_counter_ns()
        if call is not None:
            set_priority(request, call.body)
            answer = await get_pool(request).post_json(
                card,
                call.path,
                call.body,
                headers=upstream_headers(request),
                large=is_large(request),
            )
    except Exception as exc:
        return error(request, exc)
    prompt = to_ollama.embed_usage(answer)
    record_usage(request, card.id, prompt, 0)
    now = time.perf_counter_ns()
    timings = Timings(total_ns=now - start, load_ns=sent - start, prompt_eval_ns=now - sent)
    return JSONResponse(to_ollama.embed_response(answer, name, timings))


async def embeddings(request: Request) -> Response:
    try:
        body = await read_body(request)
        name = model_name(body)
        card = await acquire_model(request, name, keep_alive_seconds(body))
        _require_embedding(card, name)
        call = to_openai.embeddings_request(body)
        set_priority(request, call.body)
        if not opt_str(body, "prompt"):
            return JSONResponse({"embedding": []})
        answer = await get_pool(request).post_json(
            card, call.path, call.body, headers=upstream_headers(request)
        )
    except Exception as exc:
        return error(request, exc)
    record_usage(request, card.id, to_ollama.embed_usage(answer), 0)
    return JSONResponse(to_ollama.embeddings_response(answer))
