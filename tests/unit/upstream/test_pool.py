"""EnginePool against small in-process HTTP engines (aiohttp.web): routing by model,
aliases, not-found vs outage, retries around a dead replica, engine errors passed on,
SSE events, and leaving a stream early closing the upstream connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.procs import free_port
from vllama.config import Settings
from vllama.upstream.errors import EngineHTTPError, ModelNotFound, NoHealthyEngine
from vllama.upstream.pool import EnginePool

pytestmark = pytest.mark.timeout(30)


class FakeEngine:
    """Speaks just enough of vLLM's API: /health, /v1/models, chat (JSON and SSE)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.hits = 0
        self.stream_closed = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def health(self, _: web.Request) -> web.Response:
        return web.Response()

    async def models(self, _: web.Request) -> web.Response:
        card = {
            "id": self.model,
            "object": "model",
            "created": 1,
            "root": "/m",
            "max_model_len": 64,
        }
        return web.json_response({"object": "list", "data": [card]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.hits += 1
        if body == {}:  # the discovery probe: a generating engine rejects it
            return web.json_response({"error": {"message": "bad", "code": 400}}, status=400)
        if body.get("fail_with") == 503:  # an engine that is up but cannot serve
            err = {"error": {"message": "engine overloaded", "code": 503}}
            return web.json_response(err, status=503)
        if body.get("max_tokens", 0) > 64:
            err = {
                "error": {"message": "max_tokens too large", "type": "BadRequestError", "code": 400}
            }
            return web.json_response(err, status=400)
        if not body.get("stream"):
            return web.json_response({"model": body["model"], "served_by": self.url})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(1000):
                # Split an event across two writes: the decoder must join them.
                event = b"data: " + json.dumps({"i": i, "choices": []}).encode() + b"\n\n"
                await resp.write(event[:7])
                await resp.write(event[7:])
                await asyncio.sleep(0.01)
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.stream_closed.set()
            raise
        return resp


Factory = Callable[..., Awaitable[tuple[EnginePool, list[FakeEngine]]]]


@pytest.fixture
async def make_pool() -> AsyncIterator[Factory]:
    pools: list[EnginePool] = []
    engines: list[FakeEngine] = []

    async def make(
        models: list[str], *, dead: int = 0, **settings: Any
    ) -> tuple[EnginePool, list[FakeEngine]]:
        fakes = [FakeEngine(m) for m in models]
        for f in fakes:
            await f.start()
        engines.extend(fakes)
        urls = [
            {"url": f"http://127.0.0.1:{free_port()}", "models": models[:1]} for _ in range(dead)
        ]
        configs = [*urls, *({"url": f.url} for f in fakes)]
        pool = EnginePool(Settings.model_validate({"engines": configs, **settings}))
        await pool.start()
        pools.append(pool)
        return pool, fakes

    yield make
    for p in pools:
        await p.close()
    for f in engines:
        await f.stop()


async def test_routing_aliases_and_not_found(make_pool: Factory) -> None:
    pool, (a, _) = await make_pool(["chat-a", "embed-b"], aliases={"friendly": "chat-a"})
    assert {m.id for m in pool.models()} == {"chat-a", "embed-b"}
    for name in ("chat-a", "chat-a:latest", "friendly", "friendly:latest"):
        assert pool.resolve(name).id == "chat-a"
    answer = await pool.post_json(
        pool.resolve("friendly"), "/v1/chat/completions", {"model": "friendly"}
    )
    assert answer == {"model": "chat-a", "served_by": a.url}  # the pool rewrote the model
    with pytest.raises(ModelNotFound) as exc:
        pool.resolve("ghost")
    assert exc.value.status == 404 and exc.value.message == "model 'ghost' not found"


async def test_unknown_model_with_an_unreachable_engine_is_an_outage(make_pool: Factory) -> None:
    pool, _ = await make_pool(["chat-a"], dead=1)
    with pytest.raises(NoHealthyEngine) as exc:  # the unreachable engine may serve it
        pool.resolve("ghost")
    assert exc.value.status == 503 and "unreachable" in exc.value.message


async def test_dead_replica_is_retried_around_and_breaker_opens(make_pool: Factory) -> None:
    pool, (live,) = await make_pool(["chat-a"], dead=1, breaker_failures=1, health_interval_s=60)
    model = pool.resolve("chat-a")
    assert len(model.engine_urls) == 2
    dead = next(e for e in pool.engines() if e.url != live.url)
    dead.healthy = True  # as if it died after the last health check
    for _ in range(4):
        answer = await pool.post_json(model, "/v1/chat/completions", {})
        assert answer["served_by"] == live.url
    assert dead.breaker.state.name == "OPEN"
    assert dead.outstanding == 0 and all(e.outstanding == 0 for e in pool.engines())


async def test_engine_errors_keep_status_and_message(make_pool: Factory) -> None:
    pool, _ = await make_pool(["chat-a"])
    with pytest.raises(EngineHTTPError) as exc:
        await pool.post_json(pool.resolve("chat-a"), "/v1/chat/completions", {"max_tokens": 100})
    assert (exc.value.status, exc.value.message, exc.value.kind) == (
        400,
        "max_tokens too large",
        "http_4xx",
    )
    with pytest.raises(EngineHTTPError):
        async with pool.stream_events(
            pool.resolve("chat-a"), "/v1/chat/completions", {"max_tokens": 100}
        ):
            pass


async def test_failed_engine_requests_are_logged_with_kind_and_cause(
    make_pool: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    pool, (live,) = await make_pool(["chat-a"], dead=1, health_interval_s=60)
    dead = next(e for e in pool.engines() if e.url != live.url)
    dead.healthy = True
    model = pool.resolve("chat-a")
    with caplog.at_level("WARNING", logger="vllama.upstream.pool"):
        for _ in range(2):  # one of the two engines is tried first, whichever is chosen
            await pool.post_json(model, "/v1/chat/completions", {})
        with pytest.raises(EngineHTTPError):
            await pool.post_json(model, "/v1/chat/completions", {"fail_with": 503})
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        line.startswith(f"request to engine {dead.url} failed (connect): ClientConnectorError")
        for line in lines
    ), lines
    assert f"request to engine {live.url} failed (http_5xx): the engine answered HTTP 503" in lines


async def test_leaving_a_stream_early_closes_the_upstream(make_pool: Factory) -> None:
    pool, (engine,) = await make_pool(["chat-a"])
    seen = []
    async with pool.stream_events(pool.resolve("chat-a"), "/v1/chat/completions", {}) as events:
        async for event in events:
            seen.append(event["i"])
            if len(seen) == 5:
                break
    assert seen == [0, 1, 2, 3, 4]
    await asyncio.wait_for(engine.stream_closed.wait(), 2)
    assert all(e.outstanding == 0 for e in pool.engines())


async def test_forward_passes_raw_bytes(make_pool: Factory) -> None:
    pool, (engine,) = await make_pool(["chat-a"])
    body = json.dumps({"model": "chat-a", "stream": True}).encode()
    headers = {"Content-Type": "application/json"}
    async with pool.forward(
        pool.resolve("chat-a"), "POST", "/v1/chat/completions", body, headers
    ) as up:
        assert up.status == 200 and up.headers["Content-Type"] == "text/event-stream"
        raw = b""
        async for chunk in up.chunks:
            raw += chunk
            if raw.count(b"\n\n") >= 3:
                break
    assert raw.startswith(b'data: {"i": 0')
    await asyncio.wait_for(engine.stream_closed.wait(), 2)
