"""Resilience against real engines: a dead replica is routed around and taken out by its
circuit breaker, then taken back; a client that hangs up mid-stream makes vLLM abort; an
engine killed under 16 streams gives every client a terminal error and readiness 503.

The tests that kill or watch an engine's running count use an engine of their own (the
session engines are shared); the replica that dies and comes back is the instant
upstream from tests/perf (a real HTTP server speaking the OpenAI API).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import signal
import socket
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
        "breaker_min_calls": 2,  # a dead replica: every call fails, 2 calls suffice
        "breaker_reset_s": 3.0,
        "health_interval_s": 60,  # requests alone drive the breaker here
        # One conversation repeated: with prefix affinity it would keep to one replica;
        # this test is about the breaker, so replicas simply take turns.
        "balancer": "least-outstanding",
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
        assert errors == 2  # opened after breaker_min_calls failures; then no more tries
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
    """vllm:num_requests_running, prompt tokens and the finished-request counters, by reason."""
    text = httpx.get(f"{engine.url}/metrics", timeout=10).text
    out = {"running": 0.0}
    for m in re.finditer(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", text, re.M):
        out["running"] += float(m.group(1))
    out["prompt_tokens"] = 0.0
    for m in re.finditer(r"^vllm:prompt_tokens_total\{[^}]*\} (\S+)$", text, re.M):
        out["prompt_tokens"] += float(m.group(1))
    for m in re.finditer(
        r'^vllm:request_success_total\{[^}]*finished_reason="(\w+)"[^}]*\} (\S+)$', text, re.M
    ):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def assert_aborted(engine: Engine, before: dict[str, float]) -> None:
    """The client is gone: the engine's running count drops back within 10 s, because its
    requests were aborted, not because they ran to their end (that counts "length")."""
    wait_for(lambda: engine_gauges(engine)["running"] == 0, "engine request gone", 10)
    after = engine_gauges(engine)
    assert after.get("length", 0) == before.get("length", 0)
    assert after.get("stop", 0) == before.get("stop", 0)


@pytest.mark.slow
def test_client_hangup_aborts_the_engine_request(own_chat_engine: Engine) -> None:
    # A generation that would take seconds (n=16 x 1900 tokens, ignore_eos); the hang-up
    # comes after three lines. (/api streams cannot ask for that much work from the tiny
    # model, so their early exit is covered by tests/unit/upstream/test_pool.py.)
    path = "/v1/chat/completions"
    body: dict[str, Any] = {
        "model": CHAT,
        "messages": MESSAGES,
        "max_tokens": 1900,
        "ignore_eos": True,
        "n": 16,  # 4 x 480 tokens ended before the hang-up on an idle engine
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
        assert_aborted(own_chat_engine, before)


@pytest.mark.slow
def test_client_gone_before_a_non_streamed_answer_aborts_the_engine_request(
    own_chat_engine: Engine,
) -> None:
    # Issue 13: a non-streamed request whose client left kept the engine generating to the
    # end. Not streamed, vLLM sends nothing until the whole answer is ready (n=64 x 1900
    # tokens, ignore_eos: seconds), so only a watcher on the client's connection can tell.
    body = {
        "model": CHAT,
        "messages": MESSAGES,
        "max_tokens": 1900,
        "ignore_eos": True,
        # 64 x 1900 tokens: seconds even on an idle engine (16 x 1900 took under 2 s).
        "n": 64,
        "stream": False,
    }
    raw = json.dumps(body).encode()
    with run_facade(engines=[{"url": own_chat_engine.url}], max_choices=64) as url:
        # The façade has the engine in service (a fresh façade's first health rounds and
        # probes may still be running on a busy machine).
        warm = {"model": CHAT, "messages": MESSAGES, "max_tokens": 1}
        warmed = httpx.post(f"{url}/v1/chat/completions", json=warm, timeout=60)
        assert warmed.status_code == 200, warmed.text
        host, port = url.removeprefix("http://").split(":")

        def hang_up_once() -> str | None:
            """None when the engine's work was aborted, else what went otherwise."""
            wait_for(lambda: engine_gauges(own_chat_engine)["running"] == 0, "engine idle", 30)
            before = engine_gauges(own_chat_engine)
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(raw), raw)
                )
                # The prompt counted by the engine: the request is in (a counter cannot be
                # missed between polls, as the running gauge can be on a fast generation).
                try:
                    wait_for(
                        lambda: (
                            engine_gauges(own_chat_engine)["prompt_tokens"]
                            > before["prompt_tokens"]
                        ),
                        "the engine at work",
                        30,
                    )
                except TimeoutError:
                    sock.settimeout(1)
                    return f"never reached the engine; the façade said {sock.recv(300)!r}"
            wait_for(lambda: engine_gauges(own_chat_engine)["running"] == 0, "work gone", 30)
            after = engine_gauges(own_chat_engine)
            if after.get("length", 0) != before.get("length", 0):
                return f"the engine generated to the end: {before} -> {after}"
            return None

        # Twice at most: on a machine as busy as CI's the prompt counter can show late; a
        # façade that does not abort lets the engine finish every time.
        problem = hang_up_once()
        if problem is not None:
            problem = hang_up_once()
        assert problem is None, problem
        log = httpx.get(f"{url}/metrics", timeout=10).text
        assert (
            metric(log, "vllama_requests_total", route="/v1/chat/completions", status="499") or 0
        ) >= 1


def test_client_gone_before_an_ollama_answer_closes_the_upstream_request() -> None:
    # The same for /api/chat with stream false, against an engine that never answers
    # (tests/scripted_engine.py): the façade closes its upstream connection at once.
    from tests.scripted_engine import Script, scripted_engine_thread

    raw = json.dumps({"model": CHAT, "messages": MESSAGES, "stream": False}).encode()
    with (
        scripted_engine_thread(Script(hang=True)) as hung,
        run_facade(engines=[{"url": hung.url}], health_interval_s=60) as url,
    ):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(raw), raw)
            )
            wait_for(lambda: hung.counts.hung == 1, "the engine at work", 30)
        closed_from = time.monotonic()
        wait_for(lambda: hung.counts.abandoned == 1, "upstream request closed", 10)
        assert time.monotonic() - closed_from < 2.5
        text = httpx.get(f"{url}/metrics", timeout=10).text
        assert metric(text, "vllama_requests_in_flight", route="/api/chat") == 0
        assert metric(text, "vllama_requests_total", route="/api/chat", status="499") == 1


def test_rounds_with_idle_gaps_around_the_engines_keep_alive_all_succeed(
    chat_engine: Engine,
) -> None:
    # Issue 13's load pattern: rounds of streams at concurrency 32, alternating between the
    # engine directly and the façade, the façade idle for about vLLM's keep-alive timeout
    # (VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s) between its rounds. Pooled connections are kept
    # as long as the engine keeps them here (upstream_keep_alive_s=5, the race's worst
    # case; the default is 4): a request that meets one the engine closes as it arrives is
    # retried on a fresh connection (counted in vllama_upstream_retries_total), and none
    # fails or opens the breaker. Whether the race is hit in a given run depends on
    # timing; tests/unit/upstream/test_pool.py provokes it exactly with a scripted engine.
    # (The direct rounds use no keep-alive: an httpx client with its 5 s default meets the
    # same race and, retrying nothing, fails.)
    body = {
        "model": CHAT,
        "messages": MESSAGES,
        "max_tokens": 16,
        "ignore_eos": True,
        "stream": True,
    }

    async def rounds(url: str) -> tuple[int, int]:
        failed = total = 0
        no_reuse = httpx.Limits(max_connections=64, max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as c,
            httpx.AsyncClient(timeout=60, limits=no_reuse) as direct,
        ):

            async def one(client: httpx.AsyncClient, base: str) -> int:
                async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
                    async for _ in r.aiter_bytes():
                        pass
                    return r.status_code

            for gap in (4.9, 5.0, 5.1, 4.95, 5.05, 5.0, 4.9, 5.1):
                codes = await asyncio.gather(*(one(c, url) for _ in range(32)))
                total += len(codes)
                failed += sum(code != 200 for code in codes)
                idle_from = time.monotonic()
                await asyncio.gather(*(one(direct, chat_engine.url) for _ in range(32)))
                await asyncio.sleep(max(0.0, gap - (time.monotonic() - idle_from)))
        return failed, total

    with run_facade(
        engines=[{"url": chat_engine.url}], upstream_keep_alive_s=5.0, health_interval_s=60
    ) as url:
        failed, total = asyncio.run(rounds(url))
        text = httpx.get(f"{url}/metrics", timeout=10).text
    retried = metric(text, "vllama_upstream_retries_total", reason="dropped_connection") or 0
    print(f"keep-alive rounds: {failed}/{total} failed, {retried:g} retried on a fresh connection")
    assert failed == 0
    assert metric(text, "vllama_engine_breaker_state", engine=chat_engine.url) == 0
    assert (metric(text, "vllama_upstream_errors_total", kind="connect") or 0) == 0


@pytest.mark.slow
def test_engine_killed_under_16_streams(own_chat_engine: Engine, tmp_path: Path) -> None:
    """Runs last of the engine tests in this module: it kills the module's engine."""
    # 2000 tokens, ignore_eos: seconds of work per stream. (/api streams cannot ask
    # for that much work from the tiny model: vLLM hands a lagging reader its whole output
    # at once, so they may end before the kill. Their mid-stream error line is shown at an
    # exact point by test_upstream_dying_mid_stream_... below.)
    body = {
        "model": CHAT,
        "messages": MESSAGES,
        "max_tokens": 2000,
        "ignore_eos": True,
        "n": 1,  # 16 requests of one sequence each
        "stream": True,
    }
    # The façade runs as operators run it, in a process of its own: in this process its
    # event loop would share the GIL with 16 busy reader threads and time out its own
    # connects. The breaker is not this test's subject (see the first test).
    env = {"VLLAMA_HEALTH_INTERVAL_S": "0.5", "VLLAMA_BREAKER_MIN_CALLS": "1000"}
    with run_serve(["--engine", own_chat_engine.url], tmp_path, env=env) as serve:
        url = serve.url
        started = concurrent.futures.ThreadPoolExecutor(16)
        flowing, ended = [False] * 16, [False] * 16

        def stream(i: int) -> tuple[str, int]:
            """The stream's last line, and how many of its choices reached their length."""
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
                last, finished = "", 0
                for line in r.iter_lines():
                    if line:
                        flowing[i] = True
                        last = line
                        finished += line.count('"finish_reason":"length"')
                ended[i] = True
                return last, finished

        futures = [started.submit(stream, i) for i in range(16)]
        # The engine is frozen (SIGSTOP to its process group) as soon as one stream flows,
        # and killed once what it had already sent has arrived: the streams still open then
        # can never be completed, so each must end with an error. (Timing the kill against
        # the streams lost on this 2-core machine both ways: an idle engine ended them all
        # before the last began, a busy one delivers a stream's tokens in bursts.)
        wait_for(lambda: any(flowing), "a stream flowing", 120, interval=0.005)
        assert own_chat_engine.process is not None
        os.killpg(own_chat_engine.process.popen.pid, signal.SIGSTOP)
        time.sleep(1.0)  # bytes already on their way through the façade arrive
        cut = [i for i in range(16) if not ended[i]]
        own_chat_engine.kill()
        dead_at = time.monotonic()
        wait_for(lambda: httpx.get(f"{url}/health/ready").status_code == 503, "readiness 503", 2)
        took = time.monotonic() - dead_at
        errors = 0
        for f in futures:
            last, finished = f.result(timeout=30)  # no hang
            if last == "data: [DONE]":  # only for a stream that was whole before the kill
                assert finished == body["n"], "a cut stream ended as if it were complete"
            else:
                # an error event, or (a request the dying engine never took) an error answer
                assert "error" in json.loads(last.removeprefix("data: ")), last
                errors += 1
        assert cut, "every stream had ended before the engine was frozen"
        assert errors >= len(cut), f"{len(cut)} streams were open at the kill, {errors} errors"
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
