"""Every error case over raw HTTP: the status, the API's own shape, a message that names
the problem; never a traceback, never HTML, never a hang."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.engines import Engine
from tests.facade import run_facade
from tests.procs import free_port

# func_only: the engine fixtures have deadlines of their own (minutes on a busy box).
pytestmark = [pytest.mark.engine, pytest.mark.timeout(120, func_only=True)]

CHAT = "vllama-demo"
MESSAGES = [{"role": "user", "content": "hi"}]


def openai_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = resp.json()["error"]
    assert set(err) >= {"message", "type", "code"} and isinstance(err["message"], str)
    assert "Traceback" not in err["message"]
    return err


def ollama_error(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return str(body["error"])


@pytest.fixture(scope="module")
def http(facade_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=facade_url, timeout=30) as c:
        yield c


def test_malformed_json(http: httpx.Client) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        r = http.post(
            path, content=b'{"model": "demo", ', headers={"content-type": "application/json"}
        )
        assert "invalid JSON" in openai_error(r, 400)["message"]
    r = http.post("/v1/chat/completions", content=b"[1, 2]")
    assert "JSON object" in openai_error(r, 400)["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": 3, "messages": MESSAGES}, "model"),
        ({"messages": MESSAGES}, "model"),
        ({"model": CHAT, "messages": "hi"}, "messages"),
        ({"model": CHAT}, "messages"),
        ({"model": CHAT, "messages": MESSAGES, "max_tokens": "ten"}, "max_tokens"),
        ({"model": CHAT, "messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"model": CHAT, "messages": MESSAGES, "temperature": True}, "temperature"),
    ],
)
def test_wrong_types_name_the_field(http: httpx.Client, body: dict[str, Any], field: str) -> None:
    err = openai_error(http.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == field and f"'{field}'" in err["message"]


def test_engine_errors_keep_status_and_message(http: httpx.Client) -> None:
    body = {"model": CHAT, "messages": MESSAGES, "max_tokens": 100000}
    err = openai_error(http.post("/v1/chat/completions", json=body), 400)
    assert "max_model_len=512" in err["message"]  # vLLM's own words


def test_unknown_model(http: httpx.Client) -> None:
    body = {"model": "ghost", "messages": MESSAGES}
    assert openai_error(http.post("/v1/chat/completions", json=body), 404)["message"] == (
        "model 'ghost' not found"
    )
    assert openai_error(http.get("/v1/models/ghost"), 404)["type"] == "not_found_error"


def test_wrong_method(http: httpx.Client) -> None:
    r = http.get("/v1/chat/completions")
    assert "use POST" in openai_error(r, 405)["message"] and r.headers["allow"] == "POST"
    r = http.delete("/v1/models")
    openai_error(r, 405)
    r = http.get("/api/chat")
    assert "not allowed" in ollama_error(r, 405)


def test_unknown_paths_are_not_forwarded(http: httpx.Client) -> None:
    # vLLM serves these, but they are not on the allowlist.
    for method, path in [
        ("POST", "/v1/responses"),
        ("POST", "/v1/load_lora_adapter"),
        ("GET", "/v1"),
        ("POST", "/v1/audio/transcriptions"),
    ]:
        err = openai_error(http.request(method, path, json={"model": CHAT}), 404)
        assert "unknown path" in err["message"]
    assert "unknown path" in ollama_error(http.get("/api/nothing"), 404)


def test_docs_routes_are_off(http: httpx.Client) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert http.get(path).status_code == 404


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError: was a 500 with two tracebacks
        b'{"model": "vllama-demo", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": "vllama-demo", "max_tokens": ' + b"9" * 5000 + b"}",
        b'{"model": "vllama-demo", "messages": [], "temperature": NaN}',
    ],
)
def test_hostile_json_is_a_400_on_every_route(http: httpx.Client, raw: bytes) -> None:
    # Issue 13: deep nesting and odd unicode ended in 500s (and tracebacks in the log).
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        err = openai_error(http.post(path, content=raw), 400)
        assert "sys.set_int_max_str_digits" not in err["message"]
    for path in ("/api/chat", "/api/generate", "/api/embed", "/api/show", "/api/copy"):
        assert "invalid JSON" in ollama_error(http.post(path, content=raw), 400)


def test_engine_error_text_is_mapped_to_a_safe_message(http: httpx.Client) -> None:
    # vLLM's own validation errors keep their words and their field; a pydantic dump (it
    # echoes the input, internals) becomes field and reason; the full text is in the log.
    body = {"model": CHAT, "messages": MESSAGES, "max_tokens": 100000}
    err = openai_error(http.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == "max_tokens"
    body = {"model": CHAT, "messages": MESSAGES, "seed": 10**30}
    err = openai_error(http.post("/v1/chat/completions", json=body), 400)
    assert err["message"].startswith("invalid field 'seed'") and "\n" not in err["message"]
    assert "'input'" not in err["message"] and "{'type'" not in err["message"]
    message = ollama_error(
        http.post("/api/chat", json={**body, "options": {"seed": 10**30}, "stream": False}), 400
    )
    assert "{'type'" not in message and "\n" not in message


@pytest.mark.timeout(60, func_only=True)
def test_dead_engine_is_a_fast_503_in_each_shape() -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    # Listed models let the façade route to the dead engine (not just "unknown model").
    for engine in ({"url": dead}, {"url": dead, "models": [CHAT]}):
        with (
            run_facade(engines=[engine], connect_timeout_s=2) as url,
            httpx.Client(base_url=url, timeout=30) as http,
        ):
            t0 = time.monotonic()
            err = openai_error(
                http.post("/v1/chat/completions", json={"model": CHAT, "messages": MESSAGES}), 503
            )
            assert err["type"] == "service_unavailable_error"
            assert CHAT in err["message"] and dead not in err["message"]  # no engine URL
            no_engine = http.post(
                "/v1/chat/completions", json={"model": CHAT, "messages": MESSAGES}
            )
            assert int(no_engine.headers["retry-after"]) >= 1
            message = ollama_error(
                http.post("/api/chat", json={"model": CHAT, "messages": MESSAGES}), 503
            )
            assert CHAT in message
            assert time.monotonic() - t0 < 5  # connection refused: no waiting on timeouts
            assert http.get("/health").status_code == 200
            ready = http.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["engines"][0]["healthy"] is False


def test_oversize_body_is_413_in_each_shape(chat_engine: Engine) -> None:
    big = {"model": CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
    facade = run_facade(engines=[{"url": chat_engine.url}], max_body_bytes=1024)
    with facade as url, httpx.Client(base_url=url, timeout=30) as http:
        openai_error(http.post("/v1/chat/completions", json=big), 413)
        ollama_error(http.post("/api/chat", json=big), 413)
        # Under the limit still works: the limit is not applied to everything.
        small = {"model": CHAT, "messages": MESSAGES, "max_tokens": 1}
        assert http.post("/v1/chat/completions", json=small).status_code == 200
