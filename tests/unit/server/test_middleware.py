"""RequestContextMiddleware on a tiny Starlette app (the real façade is covered by
tests/integration): request id, body limit, keys, limits, and what is counted and logged."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.procs import wait_for
from vllama.config import ApiKey, Settings
from vllama.observability.metrics import Metrics
from vllama.security.keys import KeyStore
from vllama.server.middleware import RequestContextMiddleware, route_label

pytestmark = pytest.mark.timeout(60)

ALICE = ApiKey(name="alice", key="sk-alice-secret")
SOLO = ApiKey(name="solo", key="sk-solo-secret", max_concurrency=1)
PROMPT = "the secret prompt text"


class Gate:
    """Lets a test hold requests inside the app and see when they arrived."""

    def __init__(self) -> None:
        self.entered = 0
        self.open = asyncio.Event()
        self.open.set()


async def chat(request: Request) -> Response:
    body = await request.json()
    gate: Gate = request.app.state.gate
    gate.entered += 1
    await gate.open.wait()
    request.state.model = "vllama-demo"
    request.state.usage = (3, 5)
    key = request.state.api_key
    return JSONResponse(
        {
            "request_id": request.state.request_id,
            "key": key.name if key else None,
            "echo_len": len(body["prompt"]),
        }
    )


async def stream(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    seen: list[float | None] = request.app.state.seen_during_stream

    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        seen.append(
            metrics.registry.get_sample_value(
                "vllama_requests_total",
                {
                    "api": "openai",
                    "route": "/v1/chat/completions",
                    "model": "vllama-demo",
                    "status": "200",
                    "key": "anonymous",
                },
            )
        )
        request.state.model = "vllama-demo"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream")


async def embed(request: Request) -> Response:
    return JSONResponse({"size": len(await request.body())})


async def plain(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def boom(request: Request) -> Response:
    raise RuntimeError("route bug")


def make_app(metrics: Metrics, **settings: Any) -> Starlette:
    s = Settings(**settings)
    app = Starlette(
        routes=[
            Route("/api/chat", chat, methods=["POST"]),
            Route("/v1/chat/completions", stream, methods=["POST"]),
            Route("/v1/embeddings", embed, methods=["POST"]),
            Route("/api/tags", plain),
            Route("/api/version", plain),
            Route("/health", plain),
            Route("/", plain),
            Route("/v1/models", plain),
            Route("/v1/models/{model}", plain),
            Route("/metrics", plain),
            Route("/api/show", boom, methods=["POST"]),
        ],
        middleware=[
            Middleware(
                RequestContextMiddleware,
                settings=s,
                metrics=metrics,
                keys=KeyStore.from_settings(s),
            )
        ],
    )
    app.state.metrics = metrics
    app.state.gate = Gate()
    app.state.seen_during_stream = []
    return app


def client_for(app: Starlette) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://localhost")


def middleware_of(app: Starlette) -> RequestContextMiddleware:
    layer: Any = app.middleware_stack
    while not isinstance(layer, RequestContextMiddleware):
        layer = layer.app
    return layer


def sample(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access_log() -> Iterator[Capture]:
    logger = logging.getLogger("vllama.access")
    handler, level = Capture(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_route_labels_are_bounded() -> None:
    assert route_label("/api/chat") == "/api/chat"
    assert route_label("/v1/models/org/model-x") == "/v1/models/{model}"
    assert route_label("/api/blobs/sha256:abc") == "/api/blobs/{digest}"
    assert {route_label(f"/wp-admin/{i}") for i in range(50)} == {"other"}


async def test_request_id_is_generated_or_propagated(access_log: Capture) -> None:
    metrics = Metrics()
    async with client_for(make_app(metrics)) as c:
        r1 = await c.post("/api/chat", json={"prompt": PROMPT})
        r2 = await c.post("/api/chat", json={"prompt": PROMPT}, headers={"X-Request-ID": "req-42"})
        r3 = await c.get("/api/tags", headers={"X-Request-ID": "bad id with spaces"})
    rid = r1.headers["x-request-id"]
    assert len(rid) == 32 and r1.json()["request_id"] == rid
    assert r2.headers["x-request-id"] == "req-42" == r2.json()["request_id"]
    assert r3.headers["x-request-id"] != "bad id with spaces"
    assert [r.request_id for r in access_log.records] == [rid, "req-42", r3.headers["x-request-id"]]  # type: ignore[attr-defined]


async def test_access_line_and_request_metrics(access_log: Capture) -> None:
    metrics = Metrics()
    async with client_for(make_app(metrics)) as c:
        r = await c.post("/api/chat", json={"prompt": PROMPT})
        assert r.status_code == 200
        for path in ("/nope", "/wp-login.php", "/v1/models/x"):
            await c.get(path)
    line = access_log.records[0].__dict__
    assert {k: line[k] for k in ("method", "route", "model", "status", "key", "client")} == {
        "method": "POST",
        "route": "/api/chat",
        "model": "vllama-demo",
        "status": 200,
        "key": "anonymous",
        "client": "127.0.0.1",
    }
    assert (line["prompt_tokens"], line["completion_tokens"]) == (3, 5)
    assert line["latency_ms"] > 0
    assert all(PROMPT not in json.dumps(r.__dict__, default=str) for r in access_log.records)
    chat = {"api": "ollama", "route": "/api/chat", "model": "vllama-demo"}
    assert sample(metrics, "vllama_requests_total", **chat, status="200", key="anonymous") == 1
    assert sample(metrics, "vllama_request_duration_seconds_count", **chat) == 1
    other = {"api": "other", "route": "other", "model": "", "key": "anonymous"}
    assert sample(metrics, "vllama_requests_total", **other, status="404") == 2
    labels = {"api": "openai", "route": "/v1/models/{model}", "model": "", "key": "anonymous"}
    assert sample(metrics, "vllama_requests_total", **labels, status="200") == 1


async def test_streams_are_counted_when_they_end() -> None:
    metrics = Metrics()
    app = make_app(metrics)
    async with client_for(app) as c:
        r = await c.post("/v1/chat/completions", json={"stream": True})
    assert r.text == "data: 1\n\ndata: [DONE]\n\n"
    assert app.state.seen_during_stream == [None]  # not yet counted mid-stream
    labels = {"api": "openai", "route": "/v1/chat/completions", "model": "vllama-demo"}
    assert sample(metrics, "vllama_requests_total", **labels, status="200", key="anonymous") == 1
    assert sample(metrics, "vllama_requests_in_flight", api="openai", route=labels["route"]) == 0


async def test_route_errors_are_counted_as_500() -> None:
    metrics = Metrics()
    async with client_for(make_app(metrics)) as c:
        r = await c.post("/api/show", json={})
    assert r.status_code == 500
    labels = {"api": "ollama", "route": "/api/show", "model": "", "key": "anonymous"}
    assert sample(metrics, "vllama_requests_total", **labels, status="500") == 1


async def test_body_limit_from_content_length_in_each_shape() -> None:
    metrics = Metrics()
    big = {"prompt": "x" * 2048}
    async with client_for(make_app(metrics, max_body_bytes=1024)) as c:
        ollama = await c.post("/api/chat", json=big)
        openai = await c.post("/v1/embeddings", json=big)
        small = await c.post("/v1/embeddings", json={"input": "ok"})
    assert ollama.status_code == openai.status_code == 413
    assert "max_body_bytes" in ollama.json()["error"]
    assert openai.json()["error"]["type"] == "invalid_request_error"
    assert "limit is 1024" in openai.json()["error"]["message"]
    assert small.status_code == 200


async def test_body_limit_while_streaming_a_chunked_body() -> None:
    async def body(chunks: int) -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield b'"' + b"y" * 510 + b'"'  # a JSON string each

    async with client_for(make_app(Metrics(), max_body_bytes=1024)) as c:
        r = await c.post("/v1/embeddings", content=body(8))
        ok = await c.post("/v1/embeddings", content=body(1))
    assert "content-length" not in r.request.headers
    assert r.status_code == 413, r.text
    assert "max_body_bytes" in r.json()["error"]["message"]
    assert r.headers["x-request-id"]
    assert ok.status_code == 200 and ok.json() == {"size": 512}


async def test_keys_protect_every_route_but_the_open_ones() -> None:
    metrics = Metrics()
    app = make_app(metrics, api_keys=[ALICE])
    async with client_for(app) as c:
        for path in ("/", "/api/version", "/health"):
            assert (await c.get(path)).status_code == 200, path
        no_key = await c.get("/api/tags")
        wrong = await c.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"})
        metrics_page = await c.get("/metrics")
        bearer = await c.post(
            "/api/chat", json={"prompt": "hi"}, headers={"Authorization": "Bearer sk-alice-secret"}
        )
        x_key = await c.get("/v1/models", headers={"x-api-key": "sk-alice-secret"})
    assert no_key.status_code == wrong.status_code == metrics_page.status_code == 401
    assert no_key.json() == {"error": no_key.json()["error"]} and "missing API key" in no_key.text
    assert wrong.json()["error"]["type"] == "authentication_error"
    assert "invalid API key" in wrong.json()["error"]["message"]
    assert no_key.headers["www-authenticate"] == "Bearer"
    assert "sk-wrong" not in wrong.text
    assert bearer.status_code == 200 and bearer.json()["key"] == "alice"
    assert x_key.status_code == 200
    assert sample(metrics, "vllama_auth_failures_total", api="ollama") == 1
    assert sample(metrics, "vllama_auth_failures_total", api="openai") == 1
    assert sample(metrics, "vllama_auth_failures_total", api="other") == 1
    labels = {"api": "ollama", "route": "/api/chat", "model": "vllama-demo", "status": "200"}
    assert sample(metrics, "vllama_requests_total", **labels, key="alice") == 1


async def until(condition: Any, what: str) -> None:
    """tests.procs.wait_for in a thread, while this event loop serves the requests."""
    await asyncio.to_thread(wait_for, condition, what, 5, interval=0.005)


async def test_per_key_concurrency_is_429_in_the_path_shape() -> None:
    app = make_app(Metrics(), api_keys=[SOLO, ALICE])
    gate: Gate = app.state.gate
    gate.open.clear()
    solo = {"Authorization": "Bearer sk-solo-secret"}
    async with client_for(app) as c:
        first = asyncio.create_task(c.post("/api/chat", json={"prompt": "a"}, headers=solo))
        await until(lambda: gate.entered == 1, "the first request to arrive")
        second = await c.post("/api/chat", json={"prompt": "b"}, headers=solo)
        other_key = asyncio.create_task(
            c.post("/api/chat", json={"prompt": "c"}, headers={"x-api-key": "sk-alice-secret"})
        )
        await until(lambda: gate.entered == 2, "another key's request to pass")
        gate.open.set()
        assert (await first).status_code == 200 and (await other_key).status_code == 200
        third = await c.post("/api/chat", json={"prompt": "d"}, headers=solo)
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert "API key 'solo'" in second.json()["error"] and "sk-solo" not in second.text
    assert third.status_code == 200  # the slot came back


async def test_full_queue_is_503_server_busy_with_retry_after() -> None:
    metrics = Metrics()
    app = make_app(metrics, max_in_flight=1, max_queue=1)
    gate: Gate = app.state.gate
    gate.open.clear()
    async with client_for(app) as c:
        running = asyncio.create_task(c.post("/api/chat", json={"prompt": "a"}))
        await until(lambda: gate.entered == 1, "the first request to run")
        queued = asyncio.create_task(c.post("/v1/embeddings", json={"input": "b"}))
        await until(lambda: sample(metrics, "vllama_requests_queued") == 1, "one queued")
        busy = await c.post("/v1/embeddings", json={"input": "c"})
        tags = await c.get("/api/tags")  # not an inference route: never queued
        gate.open.set()
        assert (await running).status_code == 200 and (await queued).status_code == 200
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
    assert busy.json()["error"]["message"] == (
        "server busy, please try again.  maximum pending requests exceeded"
    )
    assert tags.status_code == 200
    assert sample(metrics, "vllama_queue_rejections_total") == 1
    assert sample(metrics, "vllama_requests_queued") == 0


async def test_rate_limit_is_429_then_passes_again() -> None:
    app = make_app(Metrics(), rate_limit_per_minute=60, rate_limit_burst=2)
    async with client_for(app) as c:
        await c.get("/health")  # builds the middleware stack
        limiter = middleware_of(app).rate
        assert limiter is not None
        now = [5000.0]
        limiter._clock = lambda: now[0]
        codes = [(await c.post("/api/chat", json={"prompt": "p"})).status_code for _ in range(2)]
        limited = await c.post("/api/chat", json={"prompt": "p"})
        tags = [(await c.get("/api/tags")).status_code for _ in range(5)]  # not limited
        now[0] += 1.0
        again = await c.post("/api/chat", json={"prompt": "p"})
        forwarded = await c.post(
            "/api/chat", json={"prompt": "p"}, headers={"X-Forwarded-For": "198.51.100.7"}
        )
    assert codes == [200, 200] and tags == [200] * 5
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert "rate limit exceeded" in limited.json()["error"]
    assert again.status_code == 200
    assert forwarded.status_code == 200  # another client behind the trusted proxy


# --- issue 13 --------------------------------------------------------------------------

ADMIN = ApiKey(name="ops", key="sk-ops-admin-secret")


def admin_app(**settings: Any) -> Starlette:
    app = make_app(Metrics(), **settings)
    for path in ("/api/pull", "/api/copy", "/api/delete", "/api/create", "/api/push"):
        app.router.routes.append(Route(path, plain, methods=["POST", "DELETE"]))
    app.router.routes.append(Route("/api/blobs/{digest}", plain, methods=["POST", "HEAD"]))
    return app


async def test_admin_routes_need_an_admin_key() -> None:
    app = admin_app(api_keys=[ALICE], admin_keys=[ADMIN])
    alice = {"Authorization": "Bearer sk-alice-secret"}
    ops = {"Authorization": "Bearer sk-ops-admin-secret"}
    body = {"model": "m", "source": "a", "destination": "b"}
    async with client_for(app) as c:
        for path in ("/api/pull", "/api/copy", "/api/create", "/api/push", "/api/blobs/sha256:1"):
            refused = await c.post(path, json=body, headers=alice)
            assert refused.status_code == 403, path
            assert "API key 'alice' may run models and read" in refused.json()["error"]
            assert (await c.post(path, json=body, headers=ops)).status_code == 200, path
        deleted = await c.request("DELETE", "/api/delete", json=body, headers=alice)
        assert deleted.status_code == 403
        assert (await c.request("DELETE", "/api/delete", json=body, headers=ops)).status_code == 200
        # The admin key infers and reads too; the client key still infers.
        assert (await c.post("/api/chat", json={"prompt": "p"}, headers=ops)).status_code == 200
        assert (await c.post("/api/chat", json={"prompt": "p"}, headers=alice)).status_code == 200
        assert (await c.get("/api/tags", headers=alice)).status_code == 200


async def test_with_client_keys_only_nobody_administers_and_without_keys_everyone_does() -> None:
    async with client_for(admin_app(api_keys=[ALICE])) as c:
        r = await c.post(
            "/api/pull", json={"model": "m"}, headers={"Authorization": "Bearer sk-alice-secret"}
        )
    assert r.status_code == 403 and "VLLAMA_ADMIN_KEYS" in r.json()["error"]
    async with client_for(admin_app()) as c:  # the loopback default: Ollama's behaviour
        assert (await c.post("/api/pull", json={"model": "m"})).status_code == 200


async def test_cross_site_text_plain_post_is_403_in_each_shape() -> None:
    # A web page's "simple" request: no preflight, so the server itself must refuse it.
    app = make_app(Metrics())
    headers = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    async with client_for(app) as c:
        ollama = await c.post("/api/chat", content=b'{"prompt": "p"}', headers=headers)
        openai = await c.post("/v1/embeddings", content=b'{"input": "p"}', headers=headers)
        preflight = await c.options(
            "/api/chat",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
    assert ollama.status_code == 403 and "allowed_origins" in ollama.json()["error"]
    assert openai.status_code == 403 and openai.json()["error"]["type"] == "permission_error"
    assert preflight.status_code == 403
    assert app.state.gate.entered == 0  # nothing reached the route


async def test_dns_rebinding_host_is_403_while_on_loopback() -> None:
    async with client_for(make_app(Metrics())) as c:
        rebound = await c.post(
            "/api/chat", json={"prompt": "p"}, headers={"Host": "attacker.example:11434"}
        )
        local = await c.post("/api/chat", json={"prompt": "p"}, headers={"Host": "127.0.0.1:11434"})
    assert rebound.status_code == 403 and "allowed_hosts" in rebound.json()["error"]
    assert local.status_code == 200
    # Listening on all interfaces (behind a proxy, in a container): Host is not checked.
    async with client_for(make_app(Metrics(), host="0.0.0.0")) as c:
        proxied = await c.post(
            "/api/chat", json={"prompt": "p"}, headers={"Host": "llm.example.com"}
        )
    assert proxied.status_code == 200
    async with client_for(make_app(Metrics(), allowed_hosts=["llm.example.com"])) as c:
        named = await c.get("/api/tags", headers={"Host": "llm.example.com"})
    assert named.status_code == 200


async def test_allowed_origins_get_cors_headers_and_preflights() -> None:
    app = make_app(Metrics(), allowed_origins=["https://chat.example.com"], api_keys=[ALICE])
    origin = {"Origin": "https://chat.example.com"}
    async with client_for(app) as c:
        preflight = await c.options(
            "/api/chat",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        ok = await c.post(
            "/api/chat",
            json={"prompt": "p"},
            headers={**origin, "Authorization": "Bearer sk-alice-secret"},
        )
        localhost = await c.post(
            "/api/chat",
            json={"prompt": "p"},
            headers={"Origin": "http://localhost:5173", "x-api-key": "sk-alice-secret"},
        )
    assert preflight.status_code == 204  # no key needed for a preflight
    assert preflight.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert localhost.status_code == 200  # one of Ollama's defaults


@pytest.mark.parametrize(
    "raw",
    [b"[" * 50_000 + b"]" * 50_000, b'{"prompt": "\\ud800"}', b'{"n": ' + b"9" * 5000 + b"}"],
)
async def test_bodies_that_used_to_be_500_are_400_in_each_shape(raw: bytes) -> None:
    async with client_for(make_app(Metrics())) as c:
        ollama = await c.post("/api/chat", content=raw)
        openai = await c.post("/v1/embeddings", content=raw)
        show = await c.post("/api/show", content=raw)  # (its route would raise: never reached)
    assert ollama.status_code == openai.status_code == show.status_code == 400
    assert "invalid JSON" in ollama.json()["error"]
    assert openai.json()["error"]["type"] == "invalid_request_error"


async def test_request_cost_is_bounded_and_n_counts_against_the_key() -> None:
    app = make_app(Metrics(), api_keys=[SOLO, ALICE], max_messages=3, max_choices=4)
    solo = {"Authorization": "Bearer sk-solo-secret"}
    msg = {"role": "user", "content": "x"}
    async with client_for(app) as c:
        many = await c.post("/api/chat", json={"prompt": "p", "messages": [msg] * 4}, headers=solo)
        big_n = await c.post("/v1/embeddings", json={"input": "x", "n": 5}, headers=solo)
        # solo may run one sequence at a time: n=2 in one request is refused, not run.
        two = await c.post("/v1/embeddings", json={"input": "x", "n": 2}, headers=solo)
        one = await c.post("/v1/embeddings", json={"input": "x", "n": 1}, headers=solo)
        alice = await c.post(
            "/v1/embeddings", json={"input": "x", "n": 4}, headers={"x-api-key": "sk-alice-secret"}
        )
    assert many.status_code == 400 and "max_messages" in many.json()["error"]
    assert big_n.status_code == 400 and big_n.json()["error"]["param"] == "n"
    assert two.status_code == 429 and "2 sequences" in two.json()["error"]["message"]
    assert one.status_code == 200 and alice.status_code == 200


async def test_every_503_carries_retry_after() -> None:
    async def unavailable(request: Request) -> Response:
        return JSONResponse({"error": "no healthy engine"}, status_code=503)

    app = make_app(Metrics())
    app.router.routes.append(Route("/api/ps", unavailable))
    async with client_for(app) as c:
        r = await c.get("/api/ps")
    assert r.status_code == 503 and r.headers["retry-after"] == "2"


async def test_a_client_gone_before_the_answer_cancels_the_request() -> None:
    # Issue 13: a non-streamed request whose client left kept the engine generating.
    metrics = Metrics()
    app = make_app(metrics)
    gate: Gate = app.state.gate
    gate.open.clear()
    await client_for(app).get("/health")  # builds the stack
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def held(request: Request) -> Response:
        await request.body()
        entered.set()
        try:
            await asyncio.Event().wait()  # as if waiting for the engine's whole answer
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response()

    app.router.routes.insert(0, Route("/api/chat", held, methods=["POST"]))
    body = json.dumps({"prompt": "p"}).encode()
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await incoming.put({"type": "http.request", "body": body, "more_body": False})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return await incoming.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/chat",
        "raw_path": b"/api/chat",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 11434),
    }
    call = asyncio.create_task(app(scope, receive, send))
    await asyncio.wait_for(entered.wait(), 5)
    await incoming.put({"type": "http.disconnect"})  # the client leaves
    await asyncio.wait_for(call, 5)  # ends, without an exception
    assert cancelled.is_set() and sent == []
    labels = {"api": "ollama", "route": "/api/chat", "model": "unknown", "status": "499"}
    assert sample(metrics, "vllama_requests_total", **labels, key="anonymous") == 1
