"""The Ollama API against real vLLM engines, driven by the official `ollama` client and raw HTTP."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import ollama
import pytest

from tests import procs
from tests.engines import Engine
from tests.facade import run_facade
from tests.procs import wait_for

pytestmark = [pytest.mark.engine, pytest.mark.timeout(120)]

CHAT = "vllama-demo"
EMBED = "all-minilm"
# Deterministic and short: the demo model is random, only the plumbing is under test.
OPTIONS: dict[str, Any] = {"temperature": 0, "seed": 7, "num_predict": 8}


@pytest.fixture(scope="module")
def client(facade_url: str) -> Iterator[ollama.Client]:
    with ollama.Client(host=facade_url, timeout=60) as c:
        yield c


def engine_post(engine: Engine, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(f"{engine.url}{path}", json=body, timeout=60)
    resp.raise_for_status()
    result: dict[str, Any] = resp.json()
    return result


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# --- inference -----------------------------------------------------------------------------


def test_chat_counts_equal_the_engines_own_usage(
    client: ollama.Client, chat_engine: Engine
) -> None:
    messages = [{"role": "user", "content": "Tell me about llamas."}]
    answer = client.chat(model=CHAT, messages=messages, options=OPTIONS)
    direct = engine_post(
        chat_engine,
        "/v1/chat/completions",
        {"model": CHAT, "messages": messages, "max_tokens": 8, "temperature": 0, "seed": 7},
    )
    assert answer.done is True
    assert answer.message.role == "assistant"
    assert answer.message.content == direct["choices"][0]["message"]["content"]
    assert answer.prompt_eval_count == direct["usage"]["prompt_tokens"]
    assert answer.eval_count == direct["usage"]["completion_tokens"]
    assert answer.done_reason == ("length" if answer.eval_count == 8 else "stop")
    assert answer.total_duration is not None and answer.total_duration > 0
    assert answer.eval_duration is not None and answer.eval_duration >= 0
    assert answer.total_duration >= (answer.prompt_eval_duration or 0) + answer.eval_duration


def test_chat_streaming_ends_with_the_figures(client: ollama.Client) -> None:
    parts = list(
        client.chat(
            model=f"{CHAT}:latest",
            messages=[{"role": "user", "content": "hi"}],
            options=OPTIONS,
            stream=True,
        )
    )
    assert len(parts) >= 2
    assert all(p.done is False for p in parts[:-1])
    final = parts[-1]
    assert final.done is True
    assert final.done_reason in ("stop", "length")
    assert (final.eval_count or 0) >= len([p for p in parts[:-1] if p.message.content])
    assert final.prompt_eval_count and final.prompt_eval_count > 0
    assert "".join(p.message.content or "" for p in parts)
    assert datetime.fromisoformat(str(final.created_at).replace("Z", "+00:00")).tzinfo is not None


def test_generate_templated_and_raw_match_the_engine(
    client: ollama.Client, chat_engine: Engine
) -> None:
    templated = client.generate(model=CHAT, prompt="Once upon", system="Be brief.", options=OPTIONS)
    direct_chat = engine_post(
        chat_engine,
        "/v1/chat/completions",
        {
            "model": CHAT,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Once upon"},
            ],
            "max_tokens": 8,
            "temperature": 0,
            "seed": 7,
        },
    )
    assert templated.response == direct_chat["choices"][0]["message"]["content"]
    assert templated.prompt_eval_count == direct_chat["usage"]["prompt_tokens"]

    raw = client.generate(model=CHAT, prompt="Once upon", raw=True, options=OPTIONS)
    direct = engine_post(
        chat_engine,
        "/v1/completions",
        {"model": CHAT, "prompt": "Once upon", "max_tokens": 8, "temperature": 0, "seed": 7},
    )
    assert raw.response == direct["choices"][0]["text"]
    assert raw.prompt_eval_count == direct["usage"]["prompt_tokens"]
    assert raw.eval_count == direct["usage"]["completion_tokens"]


def test_generate_streaming(client: ollama.Client) -> None:
    parts = list(client.generate(model=CHAT, prompt="abc", options=OPTIONS, stream=True))
    assert parts[-1].done is True
    assert parts[-1].eval_count and parts[-1].eval_count > 0
    assert "".join(p.response for p in parts)


def test_raw_generate_without_num_predict_is_not_cut_at_16_tokens(client: ollama.Client) -> None:
    # vLLM's /v1/completions default is 16 tokens; Ollama's -1 means "until stop or context".
    answer = client.generate(
        model=CHAT, prompt="a", raw=True, options={"temperature": 0, "seed": 3}
    )
    assert answer.eval_count is not None and answer.eval_count > 16


def test_open_webui_load_and_unload_without_stream(facade_url: str) -> None:
    unload = httpx.post(
        f"{facade_url}/api/generate",
        json={"model": f"{CHAT}:latest", "keep_alive": 0, "prompt": ""},
        timeout=30,
    )
    assert unload.status_code == 200
    assert unload.headers["content-type"].startswith("application/json")
    assert unload.json()["done_reason"] == "unload"
    load = httpx.post(f"{facade_url}/api/chat", json={"model": CHAT, "messages": []}, timeout=30)
    assert load.json()["done"] is True
    assert load.json()["done_reason"] == "load"


def test_a_tool_conversation_passes_through_without_error(client: ollama.Client) -> None:
    # The demo model has no tool parser: offering it tools is Ollama's 400 (test_agents),
    # but a history with calls and results is still a conversation it can continue.
    answer = client.chat(
        model=CHAT,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ],
        options=OPTIONS,
    )
    assert answer.done is True
    assert answer.eval_count and answer.eval_count > 0


def test_format_json_constrains_the_output(client: ollama.Client) -> None:
    answer = client.chat(
        model=CHAT,
        messages=[{"role": "user", "content": "Give me JSON."}],
        format="json",
        options={"temperature": 0, "seed": 1, "num_predict": 12},
    )
    assert (answer.message.content or "").lstrip().startswith("{")


# --- embeddings ----------------------------------------------------------------------------


def test_embed_is_semantic(client: ollama.Client) -> None:
    answer = client.embed(
        model=EMBED,
        input=["a cat sits on the mat", "a kitten rests on a rug", "quarterly tax filing deadline"],
    )
    cat, kitten, tax = answer.embeddings
    assert len(cat) == 384
    assert cosine(cat, kitten) > cosine(cat, tax) + 0.3
    assert answer.prompt_eval_count and answer.prompt_eval_count > 0


def test_embed_truncates_long_input_unless_told_not_to(facade_url: str) -> None:
    long_text = " ".join(["word"] * 400)  # longer than all-minilm's 256 tokens
    ok = httpx.post(
        f"{facade_url}/api/embed", json={"model": EMBED, "input": long_text}, timeout=30
    )
    assert ok.status_code == 200
    assert len(ok.json()["embeddings"][0]) == 384
    refused = httpx.post(
        f"{facade_url}/api/embed",
        json={"model": EMBED, "input": long_text, "truncate": False},
        timeout=30,
    )
    assert refused.status_code == 400
    assert "context length" in refused.json()["error"]


def test_legacy_embeddings(client: ollama.Client) -> None:
    answer = client.embeddings(model=f"{EMBED}:latest", prompt="a cat")
    assert len(answer.embedding) == 384


# --- models --------------------------------------------------------------------------------


def test_list_has_tagged_names_and_aliases(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert {f"{CHAT}:latest", f"{EMBED}:latest", "demo:latest"} <= set(models)
    chat = models[f"{CHAT}:latest"]
    assert chat.size and chat.size > 0
    assert chat.details is not None and chat.details.family == "llama"
    assert chat.modified_at is not None
    assert len(chat.digest or "") == 64


def test_show_reports_context_length_and_capabilities(client: ollama.Client) -> None:
    show = client.show(CHAT)
    info = show.modelinfo or {}
    arch = info["general.architecture"]
    assert arch == "llama"
    assert info[f"{arch}.context_length"] == 512
    assert "completion" in (show.capabilities or [])
    assert "num_ctx" in (show.parameters or "")
    embed = client.show(f"{EMBED}:latest")
    assert "embedding" in (embed.capabilities or [])
    assert (embed.modelinfo or {})["bert.context_length"] == 256


def test_show_accepts_the_legacy_name_key(facade_url: str) -> None:
    resp = httpx.post(f"{facade_url}/api/show", json={"name": "demo"}, timeout=30)
    assert resp.status_code == 200
    assert resp.json()["model_info"]["llama.context_length"] == 512


def test_ps_and_version(client: ollama.Client, facade_url: str) -> None:
    running = {m.model: m for m in client.ps().models}
    chat = running[f"{CHAT}:latest"]
    assert chat.context_length == 512
    assert chat.expires_at is not None and chat.expires_at.year >= 2999
    version = httpx.get(f"{facade_url}/api/version", timeout=10).json()["version"]
    assert tuple(int(x) for x in version.split(".")) >= (0, 6, 4)
    root = httpx.get(f"{facade_url}/", timeout=10)
    assert root.text == "Ollama is running"
    assert root.headers["content-type"].startswith("text/plain")
    for path in ("/", "/api/version", "/api/tags"):  # heartbeats use HEAD
        assert httpx.head(f"{facade_url}{path}", timeout=10).status_code == 200, path


def test_pull_of_a_served_model_succeeds_and_of_another_says_what_to_do(
    client: ollama.Client,
) -> None:
    statuses = [p.status for p in client.pull(CHAT, stream=True)]
    assert statuses[-1] == "success"
    with pytest.raises(ollama.ResponseError) as info:
        client.pull("no-such-model")
    assert "vllama pull no-such-model" in str(info.value)
    with pytest.raises(ollama.ResponseError) as info:
        client.push(CHAT)
    assert info.value.status_code == 400


def test_copy_makes_an_alias_and_delete_removes_it(client: ollama.Client) -> None:
    assert client.copy(CHAT, "mine:v1").status == "success"
    answer = client.generate(model="mine:v1", prompt="x", options=OPTIONS)
    assert answer.model == "mine:v1"
    assert "mine:v1" in {m.model for m in client.list().models}
    assert client.delete("mine:v1").status == "success"
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="mine:v1", prompt="x")
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as info:
        client.delete(CHAT)  # served by a running engine: says what to do
    assert "is being served by a running engine: unload it with" in info.value.error


# --- errors --------------------------------------------------------------------------------


def test_unknown_model_is_a_404_response_error(client: ollama.Client) -> None:
    for call in (
        lambda: client.chat(model="nope", messages=[{"role": "user", "content": "x"}]),
        lambda: client.generate(model="nope", prompt="x"),
        lambda: client.show("nope"),
        lambda: client.embed(model="nope", input="x"),
    ):
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 404
        assert "model 'nope' not found" in info.value.error


def test_ndjson_framing(facade_url: str) -> None:
    body = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "options": OPTIONS}
    with httpx.stream("POST", f"{facade_url}/api/chat", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        raw = resp.read().decode()
    assert raw.endswith("\n")
    lines = raw[:-1].split("\n")
    assert all(line.strip() for line in lines), "no blank lines"
    objects = [json.loads(line) for line in lines]
    assert [o["done"] for o in objects] == [False] * (len(objects) - 1) + [True]
    final = objects[-1]
    for key in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ):
        assert isinstance(final[key], int), key
    assert final["created_at"].endswith("Z")


def test_non_streaming_is_one_json_object(facade_url: str) -> None:
    body = {"model": CHAT, "prompt": "hi", "stream": False, "options": OPTIONS}
    resp = httpx.post(f"{facade_url}/api/generate", json=body, timeout=60)
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["done"] is True


@pytest.mark.parametrize(
    ("path", "content", "words"),
    [
        ("/api/chat", b'{"model": "vllama-demo", "messages": [', "invalid JSON"),
        ("/api/generate", b"", "missing request body"),
        (
            "/api/chat",
            b'{"model": "vllama-demo", "messages": [{"role": "user", "content": "x"}], '
            b'"options": {"temperature": "hot"}}',
            'option "temperature"',
        ),
        (
            "/api/generate",
            b'{"model": "vllama-demo", "prompt": "x", "options": {"num_predict": "5"}}',
            'option "num_predict"',
        ),
        ("/api/embed", b'{"model": "all-minilm", "input": [1, 2]}', "invalid input type"),
        ("/api/chat", b'{"messages": []}', "model is required"),
    ],
)
def test_bad_requests_are_400_naming_the_field(
    facade_url: str, path: str, content: bytes, words: str
) -> None:
    resp = httpx.post(
        f"{facade_url}{path}",
        content=content,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 400
    assert words in resp.json()["error"]


def test_models_used_for_the_wrong_job_are_told_so(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(model=CHAT, input="x")
    assert info.value.status_code == 400
    assert "does not support embeddings" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model=EMBED, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 400
    assert "embedding model" in info.value.error


def test_engine_errors_keep_their_status(facade_url: str) -> None:
    # A prompt longer than the context: vLLM's 400, passed on in Ollama's shape.
    body = {"model": CHAT, "prompt": "word " * 2000, "stream": True}
    resp = httpx.post(f"{facade_url}/api/generate", json=body, timeout=60)
    assert resp.status_code == 400
    assert resp.headers["content-type"].startswith("application/json")
    assert "context length" in resp.json()["error"]


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_client_disconnect_ends_the_upstream_request(path: str) -> None:
    # The tiny engine can finish a whole generation before a hang-up lands, so the upstream
    # here is a stand-in that paces 200 events 50 ms apart (tests/perf/instant_upstream.py)
    # and counts streams whose reader left early. (Through a real engine and a real proxy:
    # tests/ops/test_proxy.py and tests/integration/test_resilience.py.)
    body: dict[str, Any] = {"model": CHAT, "options": {"num_predict": 200}}
    body |= (
        {"prompt": "a"}
        if path == "/api/generate"
        else {"messages": [{"role": "user", "content": "a"}]}
    )
    with (
        procs.running(procs.instant_upstream(chunks=200, interval_ms=50), "/health", 30) as up,
        run_facade(engines=[{"url": up.url}]) as url,
    ):
        before = procs.upstream_stats(up.url)["aborted"]
        with httpx.stream("POST", f"{url}{path}", json=body, timeout=60) as resp:
            first = json.loads(next(resp.iter_lines()))
            assert first["done"] is False
        wait_for(
            lambda: procs.upstream_stats(up.url)["aborted"] > before,
            "the façade to close the upstream request",
            5,
        )


@pytest.mark.parametrize("reports", [True, False])
def test_stream_false_is_answered_whole_only_by_engines_that_time_it(reports: bool) -> None:
    # An engine run with --enable-per-request-metrics says how long its generation took:
    # stream:false is then one whole answer upstream, with eval_duration that long. Without
    # it, the engine streams (the durations need the first token's time).
    from tests.perf import procs

    generation_ms = 40.0  # of the 50 ms the paced stand-in takes (5 events 10 ms apart)
    body = {"model": CHAT, "messages": [{"role": "user", "content": "a"}], "stream": False}
    upstream = procs.instant_upstream(
        chunks=5, interval_ms=10, request_metrics_ms=generation_ms if reports else None
    )
    with (
        procs.running(upstream, "/health", 30) as up,
        run_facade(engines=[{"url": up.url}]) as url,
    ):
        first = httpx.post(f"{url}/api/chat", json=body, timeout=30)  # learns the engine
        before = procs.upstream_stats(up.url)
        answer = httpx.post(f"{url}/api/chat", json=body, timeout=30)
        after = procs.upstream_stats(up.url)
    assert first.status_code == 200 and answer.status_code == 200
    one, two = first.json(), answer.json()
    whole, streamed = after["whole"] - before["whole"], after["streamed"] - before["streamed"]
    assert (whole, streamed) == ((1, 0) if reports else (0, 1))
    # The same answer either way: text, counts, reason.
    for key in ("model", "message", "done", "done_reason", "prompt_eval_count", "eval_count"):
        assert one[key] == two[key], key
    assert two["message"] == {"role": "assistant", "content": "hello " * 5}
    assert two["eval_count"] == 5 and two["prompt_eval_count"] == 8
    assert two["total_duration"] >= two["prompt_eval_duration"] + two["eval_duration"]
    if reports:  # the engine's figure; the rest of the wait is before the first token
        assert two["eval_duration"] == int(generation_ms * 1e6)
        assert two["prompt_eval_duration"] >= 8e6
    else:  # measured between the first and the last event, 10 ms apart
        assert 35e6 <= two["eval_duration"] <= 2e9
