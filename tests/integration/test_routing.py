"""Routing among replicas by the engines' own load, against a real engine: the façade
reads the real vLLM's /metrics, sees it busy with requests sent straight to it (by a
client the façade never saw), and sends new conversations to the idle replica (the
instant upstream, a real HTTP server speaking the OpenAI API). Least-outstanding, blind
to that load, splits them."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from tests import procs
from tests.engines import Engine, free_port
from tests.facade import run_facade
from tests.procs import wait_for

pytestmark = [pytest.mark.engine, pytest.mark.timeout(300, func_only=True)]

CHAT = "vllama-demo"
HEAVY = {"model": CHAT, "prompt": "go", "max_tokens": 480, "ignore_eos": True}


def at_engine(engine: Engine) -> float:
    """Requests the engine holds, running or waiting: what the load balancer reads."""
    text = httpx.get(f"{engine.url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{"))
    )


def served_by_instant(url: str, n: int) -> list[bool]:
    out = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(n):
            body = {
                "model": CHAT,
                "messages": [{"role": "user", "content": f"conversation {i}"}],
                "max_tokens": 1,
            }
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            out.append(r.json()["id"].startswith("chatcmpl-instant"))
    return out


@pytest.mark.parametrize("balancer", ["load", "least-outstanding"])
def test_a_replica_busy_with_other_clients_gets_no_new_conversations(
    chat_engine: Engine, balancer: str
) -> None:
    port = free_port()
    settings: dict[str, Any] = {
        "engines": [{"url": chat_engine.url}, {"url": f"http://127.0.0.1:{port}"}],
        "health_interval_s": 0.5,
        "balancer": balancer,
        # Load alone decides here (prefix affinity keeps a conversation on a replica up to
        # affinity_slack requests busier: tests/unit/upstream/test_balancer.py).
        "prefix_affinity": False,
    }
    stop = threading.Event()

    def heavy(i: int) -> None:  # another client, straight to the engine
        # Lengths differ, so the requests do not all end in one step and restart together
        # (the engine's running count would dip to 0 between rounds, where a poll may land).
        body = {**HEAVY, "max_tokens": HEAVY["max_tokens"] - 30 * i}
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                try:
                    http.post(f"{chat_engine.url}/v1/completions", json=body)
                except httpx.HTTPError:
                    continue  # an engine starved of CPU drops a connection: keep the load on

    load = [threading.Thread(target=heavy, args=(i,)) for i in range(10)]
    with (
        procs.running(procs.instant_upstream(port=port), "/health", 30),
        run_facade(**settings) as url,
    ):
        for t in load:
            t.start()
        try:
            # Running or waiting: on 2 cores the CPU engine admitted fewer than 6 of the
            # 10 to its batch within a minute in one CI run.
            wait_for(lambda: at_engine(chat_engine) >= 6, "the engine busy", 60)
            # Up to three rounds of 12 while the load goes on: on a machine as busy as CI's
            # the engine's /metrics can lag; a balancer blind to load splits every round.
            for _ in range(3):
                time.sleep(1.5)  # a few health rounds: the façade polled /metrics meanwhile
                picks = served_by_instant(url, 12)
                if balancer != "load" or all(picks):
                    break
        finally:
            stop.set()
            for t in load:
                t.join(120)
    if balancer == "load":
        assert all(picks), picks  # 6+ running there, none on the idle replica
    else:
        assert 0 < sum(picks) < 12, picks  # blind to the engine's own load: it splits
