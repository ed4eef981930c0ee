"""/api/chat and /api/generate.

Streamed from the engine (usage included), so the final object's durations and token
counts are measured the same way whether or not the client streams; a `stream: false`
request is answered whole by engines whose answers carry vLLM's per-request timings
(--enable-per-request-metrics), which say when the generation's first token came.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
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
from vllama.server.streaming import ProxyStream
from vllama.translate import Timings
from vllama.translate import requests as to_openai
from vllama.translate import responses as to_ollama
from vllama.translate.fields import keep_alive_seconds, model_name
from vllama.upstream.balancer import affinity_key

log = logging.getLogger(__name__)


class _Clock:
    """The figures of the final object, in ns, plus the façade's own time."""

    def __init__(self) -> None:
        self.start = time.perf_counter_ns()
        self.sent = self.start
        self.first: int | None = None
        self.last: int | None = None
        self.own_ns = 0
        self.loading_ns = 0  # waiting for an on-demand engine: load time, not the façade's

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
        waiting = time.perf_counter_ns()
        card = await acquire_model(request, name, keep_alive)
        clock.loading_ns = time.perf_counter_ns() - waiting
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

    def translate_batch(batch: list[dict[str, Any]]) -> bytes:
        """NDJSON lines for every event one network read brought: one write."""
        received = time.perf_counter_ns()
        now = time.time()
        out = b"".join(ndjson_line(c) for event in batch for c in translator.feed(event, now))
        if out:
            if clock.first is None:
                clock.first = received
            if timer is not None:
                timer.chunk(received / 1e9)
            clock.last = received
        clock.own_ns += time.perf_counter_ns() - received
        return out

    def finish() -> Timings:
        if timer is not None:
            timer.close()
        timings = clock.timings()
        prompt, completion = translator.usage
        record_usage(request, card.id, prompt, completion)
        if metrics is not None:
            metrics.observe_overhead(API, route, clock.own_ns / 1e9)
        return timings

    pool = get_pool(request)
    # Replicas: keep the conversation where its prefix is cached (balancer.py).
    affinity = affinity_key(call.body) if len(card.engine_urls) > 1 else None
    if not stream and pool.reports_timings(card):
        # The engine says how long its generation took (vLLM's per-request metrics): one
        # whole answer instead of a stream of events, with the same durations. The first
        # token is placed that long before the answer arrived: prompt_eval_duration is
        # from sending to the first token, eval_duration from the first to the last, as
        # the streamed path measures them.
        whole = {**call.body, "stream": False}
        whole.pop("stream_options", None)
        clock.own_ns += time.perf_counter_ns() - clock.start - clock.loading_ns
        clock.sent = time.perf_counter_ns()
        try:
            answer, seconds = await pool.generate_whole(
                card,
                call.path,
                whole,
                headers=upstream_headers(request),
                large=large,
                affinity=affinity,
            )
        except Exception as exc:
            return error(request, exc)
        if seconds is not None:
            received = time.perf_counter_ns()
            clock.first = max(clock.sent, received - int(seconds * 1e9))
            clock.last = received
            if timer is not None:
                timer.chunk(clock.first / 1e9)
            now = time.time()
            translator.feed(answer, now)
            translator.flush(now)
            clock.own_ns += time.perf_counter_ns() - received
            return JSONResponse(translator.aggregate(finish(), now))
        # It stopped saying (restarted without the flag): asked again, streamed.
    streamed = pool.stream_batches(
        card,
        call.path,
        call.body,
        headers=upstream_headers(request),
        large=large,
        affinity=affinity,
    )
    clock.own_ns += time.perf_counter_ns() - clock.start - clock.loading_ns
    clock.sent = time.perf_counter_ns()
    if not stream:
        # One answer: everything the engine streams, gathered here; a failure anywhere is
        # an error answer, as nothing is sent yet.
        try:
            async with streamed as batches:
                async for batch in batches:
                    translate_batch(batch)
            translator.flush(time.time())
        except Exception as exc:
            return error(request, exc)
        return JSONResponse(translator.aggregate(finish(), time.time()))

    # The engine's stream is read in this task, the one that writes the answer (as /v1
    # does): no relay task and queue per request. ProxyStream's on_close leaves the pool's
    # context, however the stream ends.
    stack = AsyncExitStack()
    try:
        batches = await stack.enter_async_context(streamed)
        # The first events decide the status: engine errors before them keep theirs.
        first = await anext(batches, None)
    except BaseException as exc:
        await stack.aclose()
        if isinstance(exc, Exception):
            return error(request, exc)
        raise

    async def lines() -> AsyncGenerator[bytes, None]:
        try:
            batch = first
            while batch is not None:
                out = translate_batch(batch)
                if out:
                    yield out
                batch = await anext(batches, None)
            now = time.time()
            tail = [*translator.flush(now), translator.final(finish(), now)]
            yield b"".join(ndjson_line(c) for c in tail)
        except Exception as exc:  # the status is sent: the error is the stream's last line
            try:
                message = refusal(exc).message
            except Exception:
                log.exception("%s stream failed", route)
                message = "internal error while streaming; see the server log"
            yield ndjson_line({"error": message})

    async def close() -> None:
        if timer is not None:
            timer.close()  # also when the client left before the end
        await stack.aclose()

    return ProxyStream(lines(), status_code=200, headers={"Content-Type": NDJSON}, on_close=close)


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
