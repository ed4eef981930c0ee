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
from vllama.upstream.balancer import affinity_key
from vllama.upstream.breaker import BreakerState
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
        self.running = 0.0  # what /metrics reports, as vLLM does
        self.waiting = 0.0
        self.metrics_polls = 0
        self.health_delay = 0.0  # seconds /health takes (a busy engine answers late)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
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
        await asyncio.sleep(self.health_delay)
        return web.Response()

    async def metrics(self, _: web.Request) -> web.Response:
        self.metrics_polls += 1
        labels = f'{{engine="0",model_name="{self.model}"}}'
        return web.Response(
            text=f"vllm:num_requests_running{labels} {self.running}\n"
            f"vllm:num_requests_waiting{labels} {self.waiting}\n"
            f"vllm:kv_cache_usage_perc{labels} 0.1\n"
        )

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
        if body.get("fail_with") in (400, 500):  # internals in the error text
            text = (
                'Traceback (most recent call last):\n  File "/srv/vllm/entrypoints/x.py", '
                "line 1\nValueError: /srv/models/secret-model/config.json is broken"
            )
            err = {"error": {"message": text, "code": body["fail_with"]}}
            return web.json_response(err, status=body["fail_with"])
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
    pool, (live,) = await make_pool(["chat-a"], dead=1, breaker_min_calls=1, health_interval_s=60)
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
        while chunk := await up.read():
            raw += chunk
            if raw.count(b"\n\n") >= 3:
                break
    assert raw.startswith(b'data: {"i": 0')
    await asyncio.wait_for(engine.stream_closed.wait(), 2)


# --- a scripted engine that drops connections or hangs (tests/scripted_engine.py) ----------


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[tuple[EnginePool, Any, Any]]]]:
    from tests.scripted_engine import Script, ScriptedEngine
    from vllama.observability.metrics import Metrics

    started: list[tuple[EnginePool, ScriptedEngine]] = []

    async def make(script: Script, **settings: Any) -> tuple[EnginePool, Any, Metrics]:
        engine = ScriptedEngine(script)
        await engine.start()
        metrics = Metrics()
        # capabilities given: no probe requests mixed into the script's counts
        engines = [{"url": engine.url, "capabilities": []}]
        pool = EnginePool(Settings.model_validate({"engines": engines, **settings}), metrics)
        await pool.start()
        started.append((pool, engine))
        return pool, engine, metrics

    yield make
    for pool, engine in started:
        await pool.close()
        await engine.stop()


def sample(metrics: Any, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


async def test_connections_dropped_on_reuse_are_retried_fresh_and_spare_the_breaker(
    scripted: Any,
) -> None:
    # Issue 13: at the start of a round after a few idle seconds, dozens of requests met a
    # pooled connection the engine had closed; three such failures opened the breaker and
    # the rest of the round got 503 while the engine was fine.
    from tests.scripted_engine import Script

    pool, engine, metrics = await scripted(Script(drop_reused=True), health_interval_s=60)
    model = pool.resolve("vllama-demo")
    body = {"messages": [{"role": "user", "content": "hi"}]}
    for _round in range(3):  # round 1 fills the pool; later rounds reuse every connection
        answers = await asyncio.gather(
            *(pool.post_json(model, "/v1/chat/completions", body) for _ in range(8))
        )
        assert all(a["id"] == "chatcmpl-scripted" for a in answers)
    assert engine.counts.dropped >= 8  # the race really happened
    assert engine.counts.answered >= 24  # (and discovery's capability probes)
    (e,) = pool.engines()
    assert e.breaker.state.name == "CLOSED" and e.breaker.failure_rate()[1] == 0
    url = engine.url
    retried = sample(
        metrics, "vllama_upstream_retries_total", engine=url, reason="dropped_connection"
    )
    assert retried >= 8  # (drops of discovery's own requests are not retries)
    assert sample(metrics, "vllama_upstream_errors_total", engine=url, kind="connect") == 0


async def test_a_stream_that_goes_silent_times_out_and_counts_as_a_failure(
    scripted: Any,
) -> None:
    from tests.scripted_engine import Script
    from vllama.upstream.errors import EngineConnectionError

    pool, engine, metrics = await scripted(
        Script(stall_stream=True), read_timeout_s=0.5, health_interval_s=60
    )
    model = pool.resolve("vllama-demo")
    seen = []
    with pytest.raises(EngineConnectionError) as exc:
        async with pool.stream_events(model, "/v1/chat/completions", {"messages": []}) as events:
            async for event in events:
                seen.append(event)
    assert len(seen) == 1 and exc.value.status == 504
    assert "127.0.0.1" not in exc.value.message  # no engine address for the client
    assert sample(metrics, "vllama_upstream_errors_total", engine=engine.url, kind="timeout") == 1
    (e,) = pool.engines()
    assert e.breaker.failure_rate() == (1, 1) and e.outstanding == 0


async def test_a_hung_engine_opens_its_breaker(scripted: Any) -> None:
    from tests.scripted_engine import Script
    from vllama.upstream.errors import EngineConnectionError, NoHealthyEngine

    pool, engine, _ = await scripted(
        Script(hang=True), read_timeout_s=0.3, breaker_min_calls=3, health_interval_s=60
    )
    model = pool.resolve("vllama-demo")
    for _ in range(3):
        with pytest.raises(EngineConnectionError):
            await pool.post_json(model, "/v1/chat/completions", {"messages": []})
    (e,) = pool.engines()
    assert e.breaker.state.name == "OPEN" and e.outstanding == 0
    with pytest.raises(NoHealthyEngine) as exc:  # taken out: answered at once, with a wait
        await pool.post_json(model, "/v1/chat/completions", {"messages": []})
    assert exc.value.status == 503 and exc.value.retry_after is not None
    assert engine.url not in exc.value.message


async def test_engine_error_text_never_reaches_the_client(
    make_pool: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    pool, _ = await make_pool(["chat-a"])
    model = pool.resolve("chat-a")
    with (
        caplog.at_level("WARNING", logger="vllama.upstream.pool"),
        pytest.raises(EngineHTTPError) as exc,
    ):
        await pool.post_json(model, "/v1/chat/completions", {"fail_with": 500})
    assert exc.value.status == 500
    assert "Traceback" not in exc.value.message and "/srv/" not in exc.value.message
    assert any("Traceback" in r.getMessage() for r in caplog.records)  # the log has it all
    with pytest.raises(EngineHTTPError) as exc:
        await pool.post_json(model, "/v1/chat/completions", {"fail_with": 400})
    assert exc.value.status == 400 and "/srv/" not in exc.value.message


async def test_what_engines_may_serve_includes_the_unreachable(make_pool: Factory) -> None:
    # /api/delete consults this (issue 13's data loss): an engine that is down still
    # serves its files when it comes back.
    pool, (live,) = await make_pool(["chat-a"], aliases={"friendly": "chat-a"})
    served, unknown = pool.possibly_served()
    assert {"chat-a", "/m", "friendly"} <= served and unknown == []
    await live.stop()  # it goes down: what it was seen serving still counts
    await pool.refresh()
    assert not pool.engines()[0].healthy
    assert {"chat-a", "/m"} <= pool.possibly_served()[0]


async def test_engines_that_never_answered_make_it_unknown(make_pool: Factory) -> None:
    pool, _ = await make_pool(["chat-a"], dead=1)
    dead = next(e for e in pool.engines() if e.cards is None)
    assert pool.possibly_served()[1] == [dead.url]
    source = Settings.model_validate(
        {"engines": [{"url": dead.url, "models": ["qwen"], "source": "/srv/models/qwen"}]}
    )
    known = EnginePool(source)  # a supervised engine: what it loads is configured
    assert known.possibly_served() == ({"qwen", "/srv/models/qwen"}, [])


async def test_replicas_are_chosen_by_their_engines_own_load(make_pool: Factory) -> None:
    pool, (a, b) = await make_pool(["m", "m"], health_interval_s=0.2)
    a.running, a.waiting = 20.0, 2.0  # busy with other clients' requests
    await pool.refresh()  # a health round polls both engines' /metrics
    assert a.metrics_polls and b.metrics_polls
    model = pool.resolve("m")
    served = [
        (await pool.post_json(model, "/v1/chat/completions", {}))["served_by"] for _ in range(8)
    ]
    assert served == [b.url] * 8
    a.running = a.waiting = 0.0
    b.running = 30.0
    await pool.refresh()
    served = [
        (await pool.post_json(model, "/v1/chat/completions", {}))["served_by"] for _ in range(8)
    ]
    assert served == [a.url] * 8


async def test_a_conversation_keeps_its_replica_through_the_pool(make_pool: Factory) -> None:
    pool, engines = await make_pool(["m", "m", "m"])
    model = pool.resolve("m")
    homes = []
    for i in range(12):
        key = affinity_key({"messages": [{"role": "user", "content": f"conversation {i}"}]})
        served = set()
        for _ in range(4):
            answer = await pool.post_json(model, "/v1/chat/completions", {"n": 1}, affinity=key)
            served.add(answer["served_by"])
        assert len(served) == 1  # every turn on one replica
        homes += served
    assert len(set(homes)) > 1 and set(homes) <= {e.url for e in engines}  # spread
    rr, _ = await make_pool(["m", "m"], balancer="round-robin")
    key = affinity_key({"prompt": "same"})
    served = [
        (await rr.post_json(rr.resolve("m"), "/v1/chat/completions", {"n": 1}, affinity=key))[
            "served_by"
        ]
        for _ in range(4)
    ]
    assert len(set(served)) == 2  # round robin ignores the conversation


async def test_engines_without_replicas_are_not_polled(make_pool: Factory) -> None:
    pool, (solo, other) = await make_pool(["a", "b"])
    await pool.refresh()
    assert solo.metrics_polls == other.metrics_polls == 0


async def test_late_health_answers_take_an_engine_out_only_after_several_rounds(
    make_pool: Factory,
) -> None:
    """A busy engine answering /health late keeps serving (readiness stays 200, a gateway
    keeps the host); as many late rounds as health_timeouts_to_fail take it out."""
    pool, (a,) = await make_pool(
        ["m"],
        health_interval_s=60,
        health_timeout_s=0.2,
        connect_timeout_s=0.2,
        health_timeouts_to_fail=3,
    )
    engine = pool.engines()[0]
    assert engine.healthy
    a.health_delay = 1.0
    for _ in range(2):
        await pool.refresh()
        assert engine.healthy and engine.breaker.state is BreakerState.CLOSED
    await pool.refresh()
    assert not engine.healthy
    a.health_delay = 0.0
    await pool.refresh()
    assert engine.healthy
    # Counted in a row: a timely answer in between starts the count again.
    a.health_delay = 1.0
    await pool.refresh()
    await pool.refresh()
    a.health_delay = 0.0
    await pool.refresh()
    a.health_delay = 1.0
    await pool.refresh()
    await pool.refresh()
    assert engine.healthy


async def test_a_refused_health_check_takes_an_engine_out_at_once(make_pool: Factory) -> None:
    pool, (a,) = await make_pool(["m"], health_interval_s=60, health_timeouts_to_fail=3)
    engine = pool.engines()[0]
    assert engine.healthy
    await a.stop()
    await pool.refresh()
    assert not engine.healthy
