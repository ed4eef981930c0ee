"""API keys and admission limits on the real façade, with the real clients: every protected
route refuses without a key and accepts with one; per-key concurrency (429), the bounded
queue (503 + Retry-After) and the per-client rate limit (429 + Retry-After).

Requests are held inside the façade by a real slow client: a raw socket that sends the
headers and part of the body. The middleware admits a request (and holds its slots) before
the route reads the body, so the slot stays taken until the socket closes — deterministic,
unlike racing a generation.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import ollama
import openai
import pytest
from fastapi.routing import APIRoute

from tests.engines import Engine
from tests.facade import run_facade
from tests.procs import wait_for
from tests.scripted_engine import Script, scripted_engine_thread
from vllama.config import Settings
from vllama.server.app import create_app

pytestmark = [pytest.mark.engine, pytest.mark.timeout(180, func_only=True)]

CHAT = "vllama-demo"
EMBED = "all-minilm"
HELD = "held-model"  # served by a scripted engine that never answers (tests/scripted_engine.py)
ALICE = "sk-alice-7f3e9c"
SOLO = "sk-solo-51b2aa"
KEYS = [
    {"name": "alice", "key": ALICE},
    {"name": "solo", "key": SOLO, "max_concurrency": 1, "priority": 5},
]
OPEN = {("GET", "/"), ("GET", "/api/version"), ("GET", "/health"), ("GET", "/health/ready")}
# What the façade must protect; the test also covers any route added later (read from the app).
PROTECTED = {
    ("GET", "/api/tags"),
    ("GET", "/api/ps"),
    ("POST", "/api/show"),
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("POST", "/api/blobs/{digest}"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id:path}"),
    ("GET", "/metrics"),
}
PATH_VALUES = {"{digest}": "sha256:" + "0" * 64, "{model_id:path}": CHAT}


def engines(chat: Engine, embed: Engine) -> list[dict[str, str]]:
    return [{"url": chat.url}, {"url": embed.url}]


def app_routes() -> set[tuple[str, str]]:
    app = create_app(Settings())
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
        if method != "HEAD"
    }


def concrete(path: str) -> str:
    for template, value in PATH_VALUES.items():
        path = path.replace(template, value)
    return path


@pytest.fixture(scope="module")
def keyed(chat_engine: Engine, embed_engine: Engine) -> Iterator[str]:
    with (
        scripted_engine_thread(Script(hang=True), HELD) as hung,
        run_facade(
            engines=[*engines(chat_engine, embed_engine), {"url": hung.url}], api_keys=KEYS
        ) as url,
    ):
        yield url


def test_every_protected_route_needs_a_key(keyed: str) -> None:
    routes = app_routes()
    assert routes >= PROTECTED, f"routes missing from the app: {PROTECTED - routes}"
    assert routes >= OPEN
    with httpx.Client(base_url=keyed, timeout=60) as c:
        for method, template in sorted(routes - OPEN):
            path = concrete(template)
            body = {} if method in ("POST", "DELETE") else None
            refused = c.request(method, path, json=body)
            assert refused.status_code == 401, (method, path, refused.text)
            assert refused.headers["www-authenticate"] == "Bearer"
            error = refused.json()["error"]
            if path.startswith("/v1/"):
                assert error["type"] == "authentication_error" and error["code"] == 401, path
                assert "missing API key" in error["message"]
            else:
                assert isinstance(error, str) and "missing API key" in error, path
            wrong = c.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and "invalid API key" in wrong.text, path
            # Accepted: any answer but 401 (an empty body is a 400 past the key check).
            for header in ({"Authorization": f"Bearer {ALICE}"}, {"x-api-key": ALICE}):
                accepted = c.request(method, path, json=body, headers=header)
                assert accepted.status_code != 401, (method, path, header, accepted.text)
        for method, path in sorted(OPEN):
            assert c.request(method, path).status_code == 200, path


def test_real_clients_with_and_without_a_key(
    keyed: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    clients = ExitStack()
    request.addfinalizer(clients.close)
    with pytest.raises(ollama.ResponseError) as refused:
        clients.enter_context(ollama.Client(host=keyed, timeout=60)).list()
    assert refused.value.status_code == 401 and "missing API key" in refused.value.error
    bad = clients.enter_context(
        openai.OpenAI(base_url=f"{keyed}/v1", api_key="sk-wrong", max_retries=0, timeout=60)
    )
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()

    monkeypatch.setenv("OLLAMA_API_KEY", ALICE)  # ollama-python sends it as a Bearer token
    reply = clients.enter_context(ollama.Client(host=keyed, timeout=60)).chat(
        model=CHAT, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 3}
    )
    assert reply.done and (reply.eval_count or 0) > 0
    headers = clients.enter_context(
        ollama.Client(host=keyed, timeout=60, headers={"x-api-key": SOLO})
    )
    assert len(headers.embed(model=EMBED, input="x").embeddings[0]) == 384

    good = clients.enter_context(
        openai.OpenAI(base_url=f"{keyed}/v1", api_key=SOLO, max_retries=0, timeout=60)
    )
    assert CHAT in {m.id for m in good.models.list()}
    done = good.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert done.usage is not None and done.usage.completion_tokens > 0


def metric(url: str, name: str, headers: dict[str, str] | None = None, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@contextmanager
def held_request(url: str, path: str, headers: dict[str, str] | None = None) -> Iterator[None]:
    """A request to the hung engine (model HELD): it holds its slots until we hang up.
    (A request whose body never finishes arriving no longer does: bodies are read, within
    body_timeout_s, before a request is admitted.)"""
    host, port = url.removeprefix("http://").split(":")
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    body = json.dumps({"model": HELD, "messages": [{"role": "user", "content": "hi"}]})
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n{body}".encode()
        )
        yield


def in_flight(url: str, route: str, headers: dict[str, str] | None = None) -> float:
    return metric(url, "vllama_requests_in_flight", headers, route=route)


def test_per_key_concurrency_is_429_per_api(keyed: str) -> None:
    solo = {"Authorization": f"Bearer {SOLO}"}
    alice = {"x-api-key": ALICE}
    embed_body: dict[str, Any] = {"model": EMBED, "input": "x"}
    with held_request(keyed, "/api/chat", solo):
        wait_for(lambda: in_flight(keyed, "/api/chat", alice) == 1, "the held request", 10)
        ollama_429 = httpx.post(f"{keyed}/api/embed", json=embed_body, headers=solo, timeout=60)
        openai_429 = httpx.post(f"{keyed}/v1/embeddings", json=embed_body, headers=solo, timeout=60)
        other_key = httpx.post(f"{keyed}/api/embed", json=embed_body, headers=alice, timeout=60)
    assert ollama_429.status_code == openai_429.status_code == 429
    assert ollama_429.headers["retry-after"] == "1"
    assert "API key 'solo' (limit 1)" in ollama_429.json()["error"]
    assert openai_429.json()["error"]["type"] == "rate_limit_error"
    assert SOLO not in ollama_429.text + openai_429.text
    assert other_key.status_code == 200
    # The slot comes back once the held request is gone.
    wait_for(lambda: in_flight(keyed, "/api/chat", alice) == 0, "the slot to be released", 10)
    after = httpx.post(f"{keyed}/api/embed", json=embed_body, headers=solo, timeout=60)
    assert after.status_code == 200 and len(after.json()["embeddings"][0]) == 384


def test_full_queue_is_503_server_busy_then_drains(
    chat_engine: Engine, embed_engine: Engine
) -> None:
    body = {"model": EMBED, "input": "queued"}
    with (
        scripted_engine_thread(Script(hang=True), HELD) as hung,
        run_facade(
            engines=[*engines(chat_engine, embed_engine), {"url": hung.url}],
            max_in_flight=1,
            max_queue=1,
        ) as url,
    ):
        results: list[httpx.Response] = []
        with held_request(url, "/api/chat"):
            wait_for(lambda: in_flight(url, "/api/chat") == 1, "the held request", 10)
            waiter = threading.Thread(
                target=lambda: results.append(httpx.post(f"{url}/api/embed", json=body, timeout=60))
            )
            waiter.start()
            wait_for(lambda: metric(url, "vllama_requests_queued") == 1, "one queued request", 10)
            busy = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)
            with (
                ollama.Client(host=url, timeout=60) as busy_ollama,
                pytest.raises(ollama.ResponseError) as refused,
            ):
                busy_ollama.embed(model=EMBED, input="x")
            tags = httpx.get(f"{url}/api/tags", timeout=10)  # not an inference route
            assert results == []  # still waiting behind the held request
        waiter.join(60)
        assert not waiter.is_alive()
        rejections = metric(url, "vllama_queue_rejections_total")
        queued_now = metric(url, "vllama_requests_queued")
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
    assert busy.json()["error"]["message"] == (
        "server busy, please try again.  maximum pending requests exceeded"
    )
    assert refused.value.status_code == 503
    assert (
        refused.value.error == "server busy, please try again.  maximum pending requests exceeded"
    )
    assert tags.status_code == 200
    assert [r.status_code for r in results] == [200]
    assert rejections == 2 and queued_now == 0


def test_slow_bodies_never_hold_queue_slots_and_time_out(
    chat_engine: Engine, embed_engine: Engine
) -> None:
    # Issue 13 (slowloris): a few connections sending one body byte every few seconds held
    # every queue slot; the body is now read before admission, within body_timeout_s.
    body = {"model": EMBED, "input": "not held up"}
    with run_facade(
        engines=engines(chat_engine, embed_engine),
        max_in_flight=1,
        max_queue=1,
        body_timeout_s=3,
    ) as url:
        host, port = url.removeprefix("http://").split(":")
        answers: list[bytes] = []

        def slow_client() -> None:
            with socket.create_connection((host, int(port)), timeout=20) as sock:
                sock.sendall(
                    f"POST /api/embed HTTP/1.1\r\nHost: {host}\r\n"
                    "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
                )
                data = b""
                try:
                    for _ in range(40):  # one byte every 0.25 s, for at most 10 s
                        time.sleep(0.25)
                        sock.sendall(b" ")
                    data = sock.recv(65536)
                except OSError:  # answered and closed while we were still sending
                    data = data or sock.recv(65536)
                answers.append(data)

        slow = [threading.Thread(target=slow_client) for _ in range(3)]
        for t in slow:
            t.start()
        time.sleep(1)  # the slow clients are connected and trickling
        t0 = time.monotonic()
        ok = httpx.post(f"{url}/api/embed", json=body, timeout=60)
        waited = time.monotonic() - t0
        queued = metric(url, "vllama_requests_queued")
        for t in slow:
            t.join(30)
        timeouts = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
    assert ok.status_code == 200, ok.text  # before: 503 "server busy"
    assert waited < 2.5  # it did not wait behind the slow clients' body timeouts
    assert queued == 0
    assert len(timeouts) == 3, answers
    assert all(b"body_timeout_s" in a and b'"error"' in a for a in timeouts)


def test_rate_limit_is_429_with_retry_after_then_passes(
    chat_engine: Engine, embed_engine: Engine
) -> None:
    body = {"model": EMBED, "input": "r"}
    with (
        run_facade(
            engines=engines(chat_engine, embed_engine), rate_limit_per_minute=60, rate_limit_burst=2
        ) as url,
        httpx.Client(base_url=url, timeout=60) as c,
    ):
        first = [c.post("/api/embed", json=body).status_code for _ in range(2)]
        limited = c.post("/v1/embeddings", json=body)
        not_inference = [c.get("/api/tags").status_code for _ in range(5)]
        # Behind a trusted proxy (127.0.0.1 is one by default) each client has its own bucket.
        proxied = c.post("/api/embed", json=body, headers={"X-Forwarded-For": "198.51.100.7"})
        started = time.monotonic()
        passed: list[int] = []
        wait_for(
            lambda: passed.append(c.post("/api/embed", json=body).status_code) or passed[-1] == 200,
            "the bucket to refill",
            timeout=5,
        )
        waited = time.monotonic() - started
    assert first == [200, 200] and not_inference == [200] * 5
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) == 1
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert "60 requests per minute" in limited.json()["error"]["message"]
    assert proxied.status_code == 200
    assert set(passed[:-1]) <= {429} and passed[-1] == 200 and waited <= 1.5


def test_body_limit_is_413_in_each_shape(chat_engine: Engine, embed_engine: Engine) -> None:
    big = {"model": EMBED, "input": "x" * 4096}

    def chunked() -> Iterator[bytes]:  # no Content-Length: checked while the body streams in
        yield json.dumps(big).encode()

    with run_facade(engines=engines(chat_engine, embed_engine), max_body_bytes=1024) as url:
        ollama_413 = httpx.post(f"{url}/api/embed", json=big, timeout=60)
        openai_413 = httpx.post(f"{url}/v1/embeddings", json=big, timeout=60)
        streamed = httpx.post(f"{url}/v1/embeddings", content=chunked(), timeout=60)
        small = httpx.post(f"{url}/api/embed", json={"model": EMBED, "input": "x"}, timeout=60)
    assert ollama_413.status_code == openai_413.status_code == streamed.status_code == 413
    assert "max_body_bytes" in ollama_413.json()["error"]
    assert openai_413.json()["error"]["type"] == "invalid_request_error"
    assert "content-length" not in streamed.request.headers
    assert "max_body_bytes" in streamed.json()["error"]["message"]
    assert small.status_code == 200


OPS = "sk-ops-admin-1f9c"


@pytest.fixture(scope="module")
def with_admins(chat_engine: Engine, embed_engine: Engine) -> Iterator[str]:
    with run_facade(
        engines=engines(chat_engine, embed_engine),
        api_keys=KEYS,
        admin_keys=[{"name": "ops", "key": OPS}],
        max_aliases=5,
    ) as url:
        yield url


def test_client_keys_infer_and_read_admin_keys_also_administer(with_admins: str) -> None:
    # Issue 13: any client key could pull, delete and rewrite every key's aliases.
    alice = {"x-api-key": ALICE}
    ops = {"Authorization": f"Bearer {OPS}"}
    with httpx.Client(base_url=with_admins, timeout=60) as c:
        for method, path, body in (
            ("POST", "/api/pull", {"model": CHAT, "stream": False}),
            ("POST", "/api/copy", {"source": CHAT, "destination": "mine"}),
            ("DELETE", "/api/delete", {"model": "mine"}),
            ("POST", "/api/create", {"model": "x"}),
            ("POST", "/api/push", {"model": "x"}),
            ("POST", "/api/blobs/sha256:00", None),
        ):
            refused = c.request(method, path, json=body, headers=alice)
            assert refused.status_code == 403, (path, refused.text)
            assert "API key 'alice' may run models and read" in refused.json()["error"]
        assert (
            c.post(
                "/api/chat", json={"model": CHAT, "messages": [], "stream": False}, headers=alice
            ).status_code
            == 200
        )
        assert c.get("/api/tags", headers=alice).status_code == 200
        # An admin key does what it may; the alias it makes is every key's.
        assert c.post("/api/pull", json={"model": CHAT, "stream": False}, headers=ops).json() == {
            "status": "success"
        }
        assert (
            c.post(
                "/api/copy", json={"source": CHAT, "destination": "team:v1"}, headers=ops
            ).status_code
            == 200
        )
        names = [m["name"] for m in c.get("/api/tags", headers=alice).json()["models"]]
        assert "team:v1" in names
        assert (
            c.request("DELETE", "/api/delete", json={"model": "team:v1"}, headers=ops).status_code
            == 200
        )


@pytest.mark.parametrize(
    "name",
    ["bad\r\nname", "../../etc/passwd", "$(id)", "a;rm -rf ~", "x" * 10_000, "café", "ns.x/m"],
)
def test_aliases_follow_ollamas_name_rules(with_admins: str, name: str) -> None:
    ops = {"Authorization": f"Bearer {OPS}"}
    r = httpx.post(
        f"{with_admins}/api/copy",
        json={"source": CHAT, "destination": name},
        headers=ops,
        timeout=30,
    )
    assert r.status_code == 400 and "invalid model name" in r.json()["error"]
    tags = httpx.get(f"{with_admins}/api/tags", headers=ops, timeout=30).text
    assert name not in tags


def test_aliases_added_at_runtime_are_bounded(with_admins: str) -> None:
    # Issue 13: thousands of 10 KB aliases made /api/tags 81 MB.
    ops = {"Authorization": f"Bearer {OPS}"}
    with httpx.Client(base_url=with_admins, timeout=30, headers=ops) as c:
        codes = [
            c.post("/api/copy", json={"source": CHAT, "destination": f"bulk-{i}"}).status_code
            for i in range(8)
        ]
        over = c.post("/api/copy", json={"source": CHAT, "destination": "bulk-over"})
        again = c.post("/api/copy", json={"source": EMBED, "destination": "bulk-0"})  # repoint
        for i in range(8):
            c.request("DELETE", "/api/delete", json={"model": f"bulk-{i}"})
        after = c.post("/api/copy", json={"source": CHAT, "destination": "bulk-after"})
        c.request("DELETE", "/api/delete", json={"model": "bulk-after"})
    assert codes == [200] * 5 + [400] * 3  # max_aliases=5
    assert over.status_code == 400 and "max_aliases" in over.json()["error"]
    assert again.status_code == 200
    assert after.status_code == 200  # deleting gave the room back


def test_a_client_cannot_pick_its_own_priority() -> None:
    # Issue 13: `priority` in a /v1 body went to vLLM as sent; scheduling is the key's.
    with (
        scripted_engine_thread(Script()) as engine,
        run_facade(
            engines=[{"url": engine.url}],
            api_keys=KEYS,
            health_interval_s=60,
        ) as url,
    ):
        body = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "priority": -1000}
        for headers, expected in (({"x-api-key": ALICE}, None), ({"x-api-key": SOLO}, 5)):
            r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)
            assert r.status_code == 200, r.text
            assert engine.last_request is not None
            assert engine.last_request.get("priority") == expected
            ollama_body = {"model": CHAT, "messages": body["messages"], "stream": False}
            r = httpx.post(
                f"{url}/api/chat",
                json={**ollama_body, "priority": -1000},
                headers=headers,
                timeout=30,
            )
            assert r.status_code == 200, r.text
            assert engine.last_request.get("priority") == expected
