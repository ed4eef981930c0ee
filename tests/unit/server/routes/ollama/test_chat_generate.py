"""/api/chat and /api/generate through the real app and a recording pool: what is sent
upstream (path, translated body, key priority, request id), NDJSON out with the usage in
the final object, one object without streaming, and each way it can fail."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.server.routes.stub_pool import (
    CHAT,
    USAGE_EVENT,
    chat_event,
    client_for,
    make_app,
)
from vllama.upstream.errors import EngineConnectionError, EngineHTTPError

pytestmark = pytest.mark.timeout(30)

MESSAGES = [{"role": "user", "content": "hi"}]


def lines(text: str) -> list[dict[str, Any]]:
    assert text.endswith("\n") and "\n\n" not in text  # NDJSON: no blank lines
    return [json.loads(line) for line in text.splitlines()]


async def test_chat_streams_ndjson_and_sends_the_translated_request() -> None:
    app, pool = make_app(api_keys=[{"key": "sk-a", "name": "a", "priority": 3}])
    pool.script.events = [chat_event("Hel"), chat_event("lo", "stop"), USAGE_EVENT]
    async with client_for(app) as c:
        r = await c.post(
            "/api/chat",
            json={"model": "demo:latest", "messages": MESSAGES, "options": {"num_predict": 4}},
            headers={"Authorization": "Bearer sk-a", "X-Request-ID": "rid-1"},
        )
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    out = lines(r.text)
    assert [o["message"]["content"] for o in out] == ["Hel", "lo", ""]
    assert all(o["model"] == "demo:latest" for o in out)  # the name the client used
    final = out[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert (final["prompt_eval_count"], final["eval_count"]) == (5, 2)
    [call] = pool.calls
    assert (call.kind, call.model, call.path) == ("stream_events", CHAT, "/v1/chat/completions")
    assert call.body["messages"] == MESSAGES and call.body["max_tokens"] == 4
    assert call.body["priority"] == 3  # the key's priority, for vLLM's scheduler
    assert call.headers == {"X-Request-ID": "rid-1"}
    metrics = app.state.metrics.render().decode()
    assert 'vllama_completion_tokens_total{model="vllama-demo"} 2.0' in metrics


async def test_stream_false_is_one_object_with_everything() -> None:
    app, pool = make_app()
    pool.script.events = [chat_event("Hel"), chat_event("lo", "stop"), USAGE_EVENT]
    async with client_for(app) as c:
        r = await c.post("/api/chat", json={"model": CHAT, "messages": MESSAGES, "stream": False})
    body = r.json()
    assert r.status_code == 200 and body["message"]["content"] == "Hello"
    assert body["done"] is True and body["eval_count"] == 2


async def test_generate_without_a_template_goes_to_completions() -> None:
    app, pool = make_app()
    pool.script.events = [
        {"choices": [{"index": 0, "text": "once", "finish_reason": "length"}]},
        USAGE_EVENT,
    ]
    async with client_for(app) as c:
        r = await c.post("/api/generate", json={"model": CHAT, "prompt": "x", "raw": True})
    out = lines(r.text)
    assert [o["response"] for o in out] == ["once", ""]
    assert out[-1]["done_reason"] == "length"
    assert pool.calls[0].path == "/v1/completions" and pool.calls[0].body["prompt"] == "x"


async def test_an_empty_chat_loads_without_asking_the_engine() -> None:
    app, pool = make_app()
    async with client_for(app) as c:
        r = await c.post("/api/chat", json={"model": CHAT, "messages": []})
    assert r.json()["done_reason"] == "load" and pool.calls == []


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "ghost", "messages": MESSAGES}, 404, "model 'ghost' not found"),
        ({"model": "all-minilm", "messages": MESSAGES}, 400, "it is an embedding model"),
        ({"messages": MESSAGES}, 400, "model"),
    ],
)
async def test_refusals_are_ollama_errors(body: dict[str, Any], status: int, message: str) -> None:
    app, pool = make_app()
    async with client_for(app) as c:
        r = await c.post("/api/chat", json=body)
    assert r.status_code == status and message in r.json()["error"]
    assert pool.calls == []


async def test_bodies_that_are_not_json_objects_are_400() -> None:
    app, _ = make_app()
    async with client_for(app) as c:
        empty = await c.post("/api/chat", content=b"")
        broken = await c.post("/api/generate", content=b"{not json")
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})
    assert broken.status_code == 400 and "invalid JSON" in broken.json()["error"]


async def test_an_engine_error_before_the_first_event_keeps_its_status() -> None:
    app, pool = make_app()
    pool.script.fail = EngineHTTPError(400, "max_tokens is too large")
    async with client_for(app) as c:
        r = await c.post("/api/chat", json={"model": CHAT, "messages": MESSAGES})
    assert (r.status_code, r.json()) == (400, {"error": "max_tokens is too large"})


async def test_an_engine_lost_mid_stream_ends_with_an_error_line() -> None:
    app, pool = make_app()
    pool.script.events = [chat_event("a"), chat_event("b"), chat_event("c")]
    pool.script.fail, pool.script.fail_after = EngineConnectionError("engine gone"), 2
    async with client_for(app) as c:
        r = await c.post("/api/chat", json={"model": CHAT, "messages": MESSAGES})
    out = lines(r.text)
    assert r.status_code == 200
    assert [o["message"]["content"] for o in out[:-1]] == ["a", "b"]
    assert out[-1] == {"error": "engine gone"}
