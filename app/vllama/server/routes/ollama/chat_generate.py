"""/api/chat and /api/generate.

Always streamed from the engine (usage included), so the final object's durations and
token counts are measured the same way whether or not the client streams.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vllama.server.deps import (
    acquire_model,
    get_metrics,
    get_pool,
    is_large,
    record_usage,
    set_priority,
    upstream_headers,
)
from vllama.server.routes.ollama.plumbing import (
    API,
    NDJSON,
    Refused,
    error,
    ndjson_line,
    read_body,
    refusal,
    traits,
)
from vllama.server.streaming import END, ProxyStream, UpstreamStream
from vllama.translate import Timings
from vllama.translate import requests as to_openai
from vllama.translate import responses as to_ollama
from vllama.translate.fields import keep_alive_seconds, model_name

log = logging.getLogger(__name__)


class _Clock:
    """The figures of the final object, in ns, plus the façade's own time."""

    def __init__(self) -> None:
        self.start = time.perf_counter_ns()
        self.sent = self.start
        self.first: int | None = None
        self.last: int | None = None
        self.own_ns = 0

    def timings(self) -> Timings:
        end = time.perf_counter_ns()
        first = self.first if self.first is not None else end
        last = self.last if self.last is not None else first
        return Timings(
            total_ns=end - self.start,
            load_ns=self.sent - self.start,
            prompt_eval_ns=first - self.sent,
            eval_ns=last - first,
        )


async def generation(request: Request, *, kind: str) -> Response:
    route = f"/api/{kind}"
    clock = _Clock()
    try:
        body = await read_body(request)
        name = model_name(body)
        keep_alive = keep_alive_seconds(body)
        is_load = (
            to_openai.chat_is_load(body) if kind == "chat" else to_openai.generate_is_load(body)
        )
        if is_load and keep_alive == 0:  # Ollama's unload (`ollama stop`): nothing is loaded
            await unload_model(request, name)
            return JSONResponse(to_ollama.load_response(kind, name, time.time(), unload=True))
        card = await acquire_model(request, name, keep_alive)
        if is_load:  # Ollama's load: one JSON object, stream or not, once the model is there
            return JSONResponse(to_ollama.load_response(kind, name, time.time(), unload=False))
        if "embedding" in card.capabilities and "completion" not in card.capabilities:
            raise Refused(400, f'"{name}" does not support {kind}: it is an embedding model')
        translate = to_openai.chat_request if kind == "chat" else to_openai.generate_request
        large = is_large(request)
        if large:  # megabytes of messages: translate off the event loop
            call = await asyncio.to_thread(translate, body, traits(request, card))
        else:
            call = translate(body, traits(request, card))
        set_priority(request, call.body)
        stream = body.get("stream") is not False
    except Exception as exc:
        return error(request, exc)

    translator = to_ollama.StreamTranslator(kind, name)
    metrics = get_metrics(request)
    timer = (
        metrics.stream_timer(API, route, card.id, clock.start / 1e9)
        if metrics is not None
        else None
    )

    def on_event(event: Any) -> list[dict[str, Any]]:
        received = time.perf_counter_ns()
        chunks = translator.feed(event, time.time())
        if chunks:
            if clock.first is None:
                clock.first = received
            if timer is not None:
                timer.chunk(received / 1e9)
            clock.last = received
        clock.own_ns += time.perf_counter_ns() - received
        return chunks

    def finish() -> Timings:
        timings = clock.timings()
        prompt, completion = translator.usage
        record_usage(request, card.id, prompt, completion)
        if metrics is not None:
            metrics.observe_overhead(API, route, clock.own_ns / 1e9)
        return timings

    events = get_pool(request).stream_events(
        card, call.path, call.body, headers=upstream_headers(request), large=large
    )
    clock.own_ns += time.perf_counter_ns() - clock.start
    clock.sent = time.perf_counter_ns()
    if not stream:
        # One answer: read the engine's stream right here, in the endpoint's own task (no
        # relay task and queue); a failure anywhere is an error answer, as nothing is sent.
        try:
            async with events as upstream_events:
                async for event in upstream_events:
                    on_event(event)
            translator.flush(time.time())
        except Exception as exc:
            return error(request, exc)
        return JSONResponse(translator.aggregate(finish(), time.time()))

    upstream = UpstreamStream(events)
    try:
        # The first event decides the status: engine errors before it keep their status.
        first = await upstream.next()
    except BaseException as exc:
        await upstream.close()
        if isinstance(exc, Exception):
            return error(request, exc)
        raise

    async def lines() -> AsyncGenerator[bytes, None]:
        try:
            batch = [first]
            while batch:
                out = b"".join(ndjson_line(c) for e in batch if e is not END for c in on_event(e))
                if out:
                    yield out
                batch = [] if batch[-1] is END else await upstream.batch()
            for chunk in translator.flush(time.time()):
                yield ndjson_line(chunk)
            yield ndjson_line(translator.final(finish(), time.time()))
        except Exception as exc:  # the status is sent: the error is the stream's last line
            try:
                message = refusal(exc).message
            except Exception:
                log.exception("%s stream failed", route)
                message = "internal error while streaming; see the server log"
            yield ndjson_line({"error": message})
        finally:
            await upstream.close()  # also when the client went away: ends the upstream request

    return ProxyStream(
        lines(), status_code=200, headers={"Content-Type": NDJSON}, on_close=upstream.close
    )


async def unload_model(request: Request, name: str) -> None:
    """keep_alive 0 on an empty request: unload it now. An unknown name is a 404 as for any
    request; an engine vllama does not start stays (it answers `unload` all the same, as a
    client such as Open WebUI sends this unasked)."""
    pool = get_pool(request)
    if not await pool.unload(name):
        pool.resolve(name)  # raises ModelNotFound when nothing serves it either
    request.state.model = name


async def chat(request: Request) -> Response:
    return await generation(request, kind="chat")


async def generate(request: Request) -> Response:
    return await generation(request, kind="generate")
