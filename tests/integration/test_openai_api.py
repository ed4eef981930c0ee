"""The OpenAI API through the façade, driven by the official `openai` SDK against real
vLLM engines: what the SDK gets must be what the engine gives when asked directly."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.engines import Engine
from tests.procs import wait_for

# func_only: the engine fixtures have deadlines of their own (minutes on a busy box).
pytestmark = [pytest.mark.engine, pytest.mark.timeout(120, func_only=True)]

CHAT = "vllama-demo"
EMBED = "all-minilm"
MESSAGES: list[Any] = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def client(facade_url: str) -> Iterator[openai.OpenAI]:
    base = f"{facade_url}/v1"
    with openai.OpenAI(base_url=base, api_key="unused", timeout=60, max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def direct(chat_engine: Engine) -> Iterator[openai.OpenAI]:
    """The chat engine itself, for reference answers."""
    base = f"{chat_engine.url}/v1"
    with openai.OpenAI(base_url=base, api_key="unused", timeout=60, max_retries=0) as c:
        yield c


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_chat_stream_with_usage_matches_the_engine(
    client: openai.OpenAI, direct: openai.OpenAI
) -> None:
    # ignore_eos (vLLM): exactly max_tokens both ways, whatever the random model says.
    kwargs: dict[str, Any] = {
        "messages": MESSAGES,
        "max_tokens": 12,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    chunks = list(
        client.chat.completions.create(
            model="demo",  # an alias: rewritten to the engine's id
            stream=True,
            stream_options={"include_usage": True},
            **kwargs,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert all(c.model == CHAT for c in chunks)
    ref = direct.chat.completions.create(model=CHAT, **kwargs)
    assert ref.usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        ref.usage.prompt_tokens,
        ref.usage.completion_tokens,
    )
    assert usage.completion_tokens == 12
    assert text  # content arrived through the pass-through


def test_stream_headers(facade_url: str) -> None:
    body = {"model": CHAT, "messages": MESSAGES, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{facade_url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["cache-control"] == "no-cache"
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=5)
    assert resp.model == CHAT
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    assert resp.choices[0].message.role == "assistant"


def test_completions(client: openai.OpenAI, direct: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "prompt": "Once upon a time",
        "max_tokens": 7,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    resp = client.completions.create(model=CHAT, **kwargs)
    ref = direct.completions.create(model=CHAT, **kwargs)
    assert resp.model == CHAT and resp.choices[0].text
    assert resp.usage == ref.usage and resp.usage is not None
    assert resp.usage.completion_tokens == 7
    streamed = list(
        client.completions.create(
            model=CHAT, stream=True, stream_options={"include_usage": True}, **kwargs
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices)
    assert streamed[-1].usage == ref.usage


def test_embeddings_are_semantic(client: openai.OpenAI) -> None:
    texts = [
        "The cat sat on the mat.",
        "A kitten was lying on the rug.",
        "The tax deadline is next Tuesday.",
    ]
    resp = client.embeddings.create(model=EMBED, input=texts)
    vecs = [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]
    assert [len(v) for v in vecs] == [384, 384, 384]
    assert cosine(vecs[0], vecs[1]) > cosine(vecs[0], vecs[2]) + 0.2
    assert resp.usage.prompt_tokens > 0


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert {CHAT, EMBED, "demo"} <= set(models)
    assert all(m.object == "model" for m in models.values())
    assert client.models.retrieve(CHAT).id == CHAT
    alias = client.models.retrieve("demo")
    assert alias.id == "demo" and (alias.model_extra or {}).get("parent") == CHAT
    assert (models[CHAT].model_extra or {}).get("max_model_len") == 512


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert "model 'no-such-model' not found" in str(exc.value)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def scrape(facade_url: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels` (0 when absent)."""
    total = 0.0
    for line in httpx.get(f"{facade_url}/metrics", timeout=10).text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_stream_timings_and_tokens_reach_metrics(client: openai.OpenAI, facade_url: str) -> None:
    route = "/v1/chat/completions"
    ttft = ("vllama_time_to_first_token_seconds_count", {"api": "openai", "route": route})
    ttft_before = scrape(facade_url, ttft[0], **ttft[1])
    prompt_before = scrape(facade_url, "vllama_prompt_tokens_total", model=CHAT)
    completion_before = scrape(facade_url, "vllama_completion_tokens_total", model=CHAT)
    chunks = list(
        client.chat.completions.create(
            model=CHAT,
            messages=MESSAGES,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None
    # Tokens are counted when the response closes, just after the client saw the end.
    wait_for(
        lambda: (
            scrape(facade_url, "vllama_completion_tokens_total", model=CHAT) != completion_before
        ),
        "completion tokens counted",
        5,
    )
    # One TTFT per stream. (Inter-chunk gaps are per network chunk: the engine's events
    # may arrive coalesced, so their count is not asserted.)
    assert scrape(facade_url, ttft[0], **ttft[1]) == ttft_before + 1
    assert scrape(facade_url, "vllama_prompt_tokens_total", model=CHAT) == (
        prompt_before + usage.prompt_tokens
    )
    assert scrape(facade_url, "vllama_completion_tokens_total", model=CHAT) == (
        completion_before + usage.completion_tokens
    )


def test_a_body_that_needs_no_change_reaches_the_engine_as_sent() -> None:
    # Not encoded again when the model is the engine's own id and no priority applies; an
    # alias (or a key's priority) still rewrites it.
    from tests.facade import run_facade
    from tests.scripted_engine import Script, scripted_engine_thread

    sent = b'{ "model" : "vllama-demo",\n "messages": [{"role": "user", "content": "h\\u00e9"}] }'
    with (
        scripted_engine_thread(Script(), model=CHAT) as engine,
        run_facade(
            engines=[{"url": engine.url}], aliases={"demo": CHAT}, health_interval_s=60
        ) as url,
    ):
        headers = {"Content-Type": "application/json"}
        r = httpx.post(f"{url}/v1/chat/completions", content=sent, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        assert engine.last_raw == sent
        aliased = sent.replace(b'"vllama-demo"', b'"demo"')
        r = httpx.post(f"{url}/v1/chat/completions", content=aliased, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        assert engine.last_raw != aliased and engine.last_request is not None
        assert engine.last_request["model"] == CHAT
        assert engine.last_request["messages"] == [{"role": "user", "content": "hé"}]
