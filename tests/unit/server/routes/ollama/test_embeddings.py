"""/api/embed and /api/embeddings through the real app and a recording pool: the request
sent to /v1/embeddings, vectors and token counts back, empty inputs answered without the
engine, and models that do not embed refused."""

from __future__ import annotations

import pytest

from tests.unit.server.routes.stub_pool import CHAT, EMBED, client_for, make_app

pytestmark = pytest.mark.timeout(30)

ANSWER = {
    "data": [{"index": 1, "embedding": [0.3, 0.4]}, {"index": 0, "embedding": [0.1, 0.2]}],
    "usage": {"prompt_tokens": 6},
}


async def test_embed_sends_the_inputs_and_answers_vectors_in_order() -> None:
    app, pool = make_app()
    pool.script.answer = ANSWER
    async with client_for(app) as c:
        r = await c.post(
            "/api/embed", json={"model": EMBED, "input": ["a", "b"]}, headers={"X-Request-ID": "e1"}
        )
    body = r.json()
    assert r.status_code == 200 and body["model"] == EMBED
    assert body["embeddings"] == [[0.1, 0.2], [0.3, 0.4]] and body["prompt_eval_count"] == 6
    [call] = pool.calls
    assert (call.kind, call.model, call.path) == ("post_json", EMBED, "/v1/embeddings")
    assert call.body["input"] == ["a", "b"] and call.headers == {"X-Request-ID": "e1"}
    assert (
        'vllama_prompt_tokens_total{model="all-minilm"} 6.0' in app.state.metrics.render().decode()
    )


async def test_an_empty_input_is_answered_without_the_engine() -> None:
    app, pool = make_app()
    async with client_for(app) as c:
        embed = await c.post("/api/embed", json={"model": EMBED, "input": []})
        legacy = await c.post("/api/embeddings", json={"model": EMBED, "prompt": ""})
    assert embed.status_code == 200 and embed.json()["embeddings"] == []
    assert legacy.json() == {"embedding": []}
    assert pool.calls == []


async def test_the_legacy_route_answers_one_vector() -> None:
    app, pool = make_app()
    pool.script.answer = {"data": [{"index": 0, "embedding": [0.5]}], "usage": {}}
    async with client_for(app) as c:
        r = await c.post("/api/embeddings", json={"model": EMBED, "prompt": "hello"})
    assert r.json() == {"embedding": [0.5]}
    assert pool.calls[0].body["input"] == ["hello"]


@pytest.mark.parametrize("path", ["/api/embed", "/api/embeddings"])
async def test_a_model_that_does_not_embed_is_refused(path: str) -> None:
    app, pool = make_app()
    async with client_for(app) as c:
        r = await c.post(path, json={"model": CHAT, "input": "x", "prompt": "x"})
    assert r.status_code == 400 and "does not support embeddings" in r.json()["error"]
    assert pool.calls == []
