"""The OpenAI pass-through through the real app and a recording pool: the body's model
rewritten to the engine's id (aliases), the key's priority and the request id added, the
engine's status, headers and bytes passed back, usage counted from the stream's tail, and
bad requests refused in OpenAI's shape before any engine is asked."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.server.routes.stub_pool import CHAT, EMBED, client_for, make_app

pytestmark = pytest.mark.timeout(30)

USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
SSE = [
    b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
    b'data: {"choices":[],"usage":' + json.dumps(USAGE).encode() + b"}\n\n",
    b"data: [DONE]\n\n",
]


async def test_a_stream_is_passed_through_with_the_model_rewritten() -> None:
    app, pool = make_app(api_keys=[{"key": "sk-a", "name": "a", "priority": 1}])
    pool.script.headers = {"content-type": "text/event-stream", "server": "uvicorn", "x-n": "1"}
    pool.script.chunks = SSE
    body = {"model": "demo", "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with client_for(app) as c:
        r = await c.post(
            "/v1/chat/completions",
            json=body,
            headers={"Authorization": "Bearer sk-a", "X-Request-ID": "o1", "Accept": "*/*"},
        )
    assert r.status_code == 200 and r.content == b"".join(SSE)
    assert r.headers["x-n"] == "1" and "server" not in r.headers  # engine hop headers dropped
    assert r.headers["x-accel-buffering"] == "no" and r.headers["cache-control"] == "no-cache"
    [call] = pool.calls
    assert (call.kind, call.model, call.path) == ("forward", CHAT, "/v1/chat/completions")
    sent = json.loads(call.body)
    assert sent == {**body, "model": CHAT, "priority": 1}
    assert call.headers["X-Request-ID"] == "o1"
    metrics = app.state.metrics.render().decode()
    assert 'vllama_prompt_tokens_total{model="vllama-demo"} 3.0' in metrics
    assert 'vllama_completion_tokens_total{model="vllama-demo"} 4.0' in metrics


async def test_engine_errors_keep_their_status_and_body() -> None:
    app, pool = make_app()
    pool.script.status = 400
    pool.script.headers = {"content-type": "application/json"}
    error = {"error": {"message": "max_tokens too large", "type": "BadRequestError", "code": 400}}
    pool.script.chunks = [json.dumps(error).encode()]
    async with client_for(app) as c:
        r = await c.post("/v1/embeddings", json={"model": EMBED, "input": "x"})
    assert r.status_code == 400 and r.json() == error
    assert "vllama_prompt_tokens_total{" not in app.state.metrics.render().decode()


@pytest.mark.parametrize(
    ("path", "content", "message", "param"),
    [
        ("/v1/chat/completions", b"{oops", "invalid JSON", None),
        ("/v1/chat/completions", b"[1]", "must be a JSON object", None),
        ("/v1/chat/completions", b'{"model": "demo"}', "'messages' is required", "messages"),
        ("/v1/completions", b'{"prompt": "x"}', "'model' is required", "model"),
        ("/v1/embeddings", b'{"model": "all-minilm", "input": 3}', "'input' must be", "input"),
        ("/v1/completions", b'{"model": "m", "prompt": "x", "n": true}', "'n' must be", "n"),
    ],
)
async def test_bad_requests_are_400_in_openai_shape(
    path: str, content: bytes, message: str, param: str | None
) -> None:
    app, pool = make_app()
    async with client_for(app) as c:
        r = await c.post(path, content=content, headers={"Content-Type": "application/json"})
    error = r.json()["error"]
    assert r.status_code == 400 and error["type"] == "invalid_request_error"
    assert message in error["message"] and error["param"] == param
    assert pool.calls == []


async def test_an_unknown_model_is_404_in_openai_shape() -> None:
    app, pool = make_app()
    body: dict[str, Any] = {"model": "ghost", "messages": []}
    async with client_for(app) as c:
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert pool.calls == []


async def test_models_list_served_models_then_aliases() -> None:
    app, pool = make_app()
    pool.aliases.add("copied", EMBED)
    async with client_for(app) as c:
        listed = (await c.get("/v1/models")).json()
        alias = await c.get("/v1/models/demo")
        by_id = await c.get(f"/v1/models/{CHAT}")
        ghost = await c.get("/v1/models/org/ghost")
    assert [(m["id"], m["parent"]) for m in listed["data"]] == [
        (CHAT, None),
        (EMBED, None),
        ("demo", CHAT),
        ("copied", EMBED),
    ]
    assert alias.json()["parent"] == CHAT and alias.json()["max_model_len"] == 512
    assert by_id.json()["id"] == CHAT and by_id.json()["parent"] is None
    assert ghost.status_code == 404 and ghost.json()["error"]["code"] == 404


@pytest.mark.parametrize(
    ("url", "message"),
    [
        # A 14000x14000 PNG header in 90 bytes: vLLM 0.32 answers it with a 500.
        ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAANrAAADawCAIAAAA=", "14000x14000"),
        ("https://example.invalid/cat.png", "must be a base64 data URL"),
    ],
)
async def test_media_the_engine_should_not_decode_or_fetch_is_a_400(url: str, message: str) -> None:
    app, pool = make_app()
    part = {"type": "image_url", "image_url": {"url": url}}
    body = {"model": "demo", "messages": [{"role": "user", "content": [part]}]}
    async with client_for(app) as c:
        r = await c.post("/v1/chat/completions", json=body)
    error = r.json()["error"]
    assert r.status_code == 400 and message in error["message"], error
    assert error["param"] == "messages[0].content[0].image_url"
    assert pool.calls == []
