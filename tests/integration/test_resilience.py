"""Resilience against real engines: a dead replica is routed around and taken out by its
circuit breaker, then taken back; a client that hangs up mid-stream makes vLLM abort; an
engine killed under 16 streams gives every client a terminal error and readiness 503.

The tests that kill or watch an engine's running count use an engine of their own (the
session engines are shared); the replica that dies and comes back is the instant
upstream from tests/perf (a real HTTP server speaking the OpenAI API).
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import procs
from tests.engines import Engine, start_engine
from tests.facade import run_facade
from tests.procs import free_port, wait_for
from tests.unit.cli.serve_proc import run_serve

# func_only: the engine fixtures have deadlines of their own (minutes on a busy box).
pytestmark = [pytest.mark.engine, pytest.mark.timeout(300, func_only=True)]

CHAT = "vllama-demo"
MESSAGES = [{"role": "user", "content": "Tell me a long story."}]


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return None


def chat(http: httpx.Client) -> dict[str, Any]:
    r = http.post(
        "/v1/chat/completions", json={"model": CHAT, "messages": MESSAGES, "max_tokens": 1}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_breaker_routes_around_a_dead_replica_and_takes_it_back(chat_engine: Engine) -> None:
    port = free_port()
    flaky = f"http://127.0.0.1:{port}"
    settings: dict[str, Any] = {
        "engines": [{"url": flaky}, {"url": chat_engine.url}],
        "breaker_failures": 2,
        "breaker_reset_s": 3.0,
        "health_interval_s": 60,  # requests alone drive the breaker here
    }
    with (
        procs.running(procs.instant_upstream(port=port), "/health", 30) as upstream,
        run_facade(**settings) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        served_by = [chat(http)["id"].startswith("chatcmpl-instant") for _ in range(4)]
        assert any(served_by) and not all(served_by)  # both replicas take a share
        upstream.kill()
        # Every request still succeeds: connection refused is retried on the live replica.
        for _ in range(6):
            assert not chat(http)["id"].startswith("chatcmpl-instant")
        metrics = http.get("/metrics").text
        assert metric(metrics, "vllama_engine_breaker_state", engine=flaky) == 2
        errors = metric(metrics, "vllama_upstream_errors_total", engine=flaky, kind="connect")
        assert errors == 2  # opened after exactly breaker_failures; then no more tries
        ready = http.get("/health/ready").json()
        assert {e["url"]: e["breaker"] for e in ready["engines"]}[flaky] == "open"

        with procs.running(procs.instant_upstream(port=port), "/health", 30):
            # After breaker_reset_s one trial request goes there, succeeds and closes it.
            wait_for(
                lambda: chat(http)["id"].startswith("chatcmpl-instant"), "flaky replica back in", 15
            )
            metrics = http.get("/metrics").text
            assert metric(metrics, "vllama_engine_breaker_state", engine=flaky) == 0


@pytest.fixture(scope="module")
def own_chat_engine() -> Iterator[Engine]:
    """An engine this module may watch exclusively (its vllm:num_requests_running shows
    aborts) and finally kill."""
    # A 2048-token context (the demo model's limit) gives generations long enough to
    # still be running when the kill lands.
    engine = start_engine("chat", extra_args=["--max-model-len", "2048"])
    try:
        yield engine
    finally:
        engine.stop()


def engine_gauges(engine: Engine) -> dict[str, float]:
    """vllm:num_requests_running and the finished-request counters, by reason."""
    text = httpx.get(f"{engine.url}/metrics", timeout=10).text
    out = {"running": 0.0}
    for m in re.finditer(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", text, re.M):
        out["running"] += float(m.group(1))
    for m in re.finditer(
        r'^vllm:request_success_total\{[^}]*finished_reason="(\w+)"[^}]*\} (\S+)$', text, re.M
    ):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


@pytest.mark.slow
def test_client_hangup_aborts_the_engine_request(own_chat_engine: Engine) -> None:
    # A generation that would take seconds (n=4 x 480 tokens, ignore_eos); the hang-up
    # comes after three lines. (/api streams cannot ask for that much work from the tiny
    # model, so their early exit is covered by tests/unit/upstream/test_pool.py.)
    path = "/v1/chat/completions"
    body: dict[str, Any] = {
        "model": CHAT,
        "messages": MESSAGES,
        "max_tokens": 480,
        "ignore_eos": True,
        "n": 4,
        "stream": True,
    }
    with run_facade(engines=[{"url": own_chat_engine.url}]) as url:
        before = engine_gauges(own_chat_engine)
        assert before["running"] == 0
        with httpx.stream("POST", f"{url}{path}", json=body, timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
        # The client is gone: the engine's running count drops back quickly...
        gone_from = time.monotonic()
        wait_for(lambda: engine_gauges(own_chat_engine)["running"] == 0, "engine request gone", 5)
        assert time.monotonic() - gone_from < 2.5
        # ...because it was aborted, not because it ran to its end (that counts "length").
        after = engine_gauges(own_chat_engine)
        assert after.get("length", 0) == before.get("length", 0)
        assert after.get("stop", 0) == before.get("stop", 0)


@pytest.mark.slow
def test_engine_killed_under_16_streams(own_chat_engine: Engine, tmp_path: Path) -> None:
    """Runs last of the engine tests in this module: it kills the module's engine."""
    # n=4 x 2000 tokens, ignore_eos: seconds of work per stream. (/api streams cannot ask
    # for that much work from the tiny model: vLLM hands a lagging reader its whole output
    # at once, so they may end before the kill. Their mid-stream error line is shown at an
    # exact point by test_upstream_dying_mid_stream_... below.)
    body = {
        "model": CHAT,
        "messages": MESSAGES,
        "max_tokens": 2000,
        "ignore_eos": True,
        "n": 4,
        "stream": True,
    }
    # The façade runs as operators run it, in a process of its own: in this process its
    # event loop would share the GIL with 16 busy reader threads and time out its own
    # connects. The breaker is not this test's subject (see the first test).
    env = {"VLLAMA_HEALTH_INTERVAL_S": "0.5", "VLLAMA_BREAKER_FAILURES": "1000"}
    with run_serve(["--engine", own_chat_engine.url], tmp_path, env=env) as serve:
        url = serve.url
        started = concurrent.futures.ThreadPoolExecutor(16)
        first_chunk = [False] * 16

        def stream(i: int) -> tuple[str, float]:
            """The stream's last line and when it arrived."""
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
                last, at = "", 0.0
                for line in r.iter_lines():
                    if line:
                        first_chunk[i] = True
                        last, at = line, time.monotonic()
                return last, at

        futures = [started.submit(stream, i) for i in range(16)]
        wait_for(lambda: all(first_chunk), "all 16 streams flowing", 120)
        killed_at = time.monotonic()
        own_chat_engine.kill()
        dead_at = time.monotonic()
        wait_for(lambda: httpx.get(f"{url}/health/ready").status_code == 503, "readiness 503", 2)
        took = time.monotonic() - dead_at
        errors = 0
        for f in futures:
            last, at = f.result(timeout=30)  # no hang
            if last == "data: [DONE]":  # allowed only for a stream that ended before the kill
                assert at < killed_at, "a stream ended normally after its engine was killed"
            else:
                assert last.startswith("data: {") and "error" in json.loads(last[6:]), last
                errors += 1
        assert errors >= 12, f"only {errors} of 16 streams were still running at the kill"
        assert took <= 2
        assert own_chat_engine.proc is not None and own_chat_engine.proc.poll() is not None
        started.shutdown()


def test_upstream_dying_mid_stream_ends_each_api_stream_with_an_error_line() -> None:
    """An upstream that sends 3 chunks and then drops the connection (a stand-in for an
    engine dying at an exact point: tests/perf/instant_upstream.py --break-after 3)."""
    with (
        procs.running(procs.instant_upstream(chunks=10, break_after=3), "/health", 30) as up,
        run_facade(engines=[{"url": up.url}]) as url,
    ):
        with httpx.stream(
            "POST", f"{url}/api/chat", json={"model": CHAT, "messages": MESSAGES}, timeout=30
        ) as r:
            assert r.status_code == 200
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert [m["message"]["content"] for m in lines[:-1]] == ["hello "] * 3
        assert "error" in lines[-1] and not lines[-1].get("done"), lines[-1]
        assert not any(m.get("done") for m in lines)

        body = {"model": CHAT, "messages": MESSAGES, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert "error" in json.loads(events[-1][6:]), events[-1]
        assert "data: [DONE]" not in events
