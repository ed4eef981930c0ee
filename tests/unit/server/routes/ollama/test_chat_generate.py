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
    assert (call.kind, call.model, call.path) == ("stream_batches", CHAT, "/v1/chat/completions")
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


WHOLE_ANSWER: dict[str, Any] = {
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2},
}


async def test_stream_false_is_asked_whole_of_engines_that_time_their_answers() -> None:
    app, pool = make_app()
    for engine in pool.engines():
        engine.reports_timings = True  # as learned from an answer with vLLM's metrics
    pool.script.answer = WHOLE_ANSWER
    pool.script.generation_s, pool.script.delay_s = 0.004, 0.01
    async with client_for(app) as c:
        r = await c.post("/api/chat", json={"model": CHAT, "messages": MESSAGES, "stream": False})
    assert r.status_code == 200
    out = r.json()
    assert out["message"] == {"role": "assistant", "content": "Hello"} and out["done"] is True
    assert (out["prompt_eval_count"], out["eval_count"]) == (5, 2)
    assert out["eval_duration"] == 4_000_000  # the engine's own generation time
    assert out["prompt_eval_duration"] >= 5_000_000  # the rest of the 10 ms wait
    assert out["total_duration"] >= out["prompt_eval_duration"] + out["eval_duration"]
    [call] = pool.calls
    assert (call.kind, call.path) == ("generate_whole", "/v1/chat/completions")
    assert call.body["stream"] is False and "stream_options" not in call.body


async def test_an_answer_without_timings_is_asked_again_streamed() -> None:
    # The engine came back without --enable-per-request-metrics: no made-up durations.
    app, pool = make_app()
    for engine in pool.engines():
        engine.reports_timings = True
    pool.script.answer = WHOLE_ANSWER
    pool.script.events = [chat_event("Hel"), chat_event("lo", "stop"), USAGE_EVENT]
    async with client_for(app) as c:
        r = await c.post("/api/chat", json={"model": CHAT, "messages": MESSAGES, "stream": False})
    assert r.status_code == 200 and r.json()["message"]["content"] == "Hello"
    assert [call.kind for call in pool.calls] == ["generate_whole", "stream_batches"]
