"""`vllama serve` with workers = 2 in front of the real engine: /metrics from either worker
adds up both workers' requests (prometheus-client's multiprocess mode), a worker that dies
is replaced and its counts stay in the sums, a key's concurrency limit holds across the
workers, SIGTERM says "draining" on /health/ready before it refuses connections, and
streams in flight finish."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.engines import Engine
from tests.integration.test_cli_serve import (
    DRAIN_DELAY,
    assert_streams_completed,
    refused,
    sigterm_during_streams,
)
from tests.procs import wait_for
from tests.scripted_engine import Script, scripted_engine_thread
from tests.unit.cli.serve_proc import Serve, port_free, run_serve

pytestmark = [pytest.mark.engine, pytest.mark.timeout(300)]

CHAT = {
    "model": "vllama-demo",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": False,
    "options": {"num_predict": 4},
}


def workers_env(tmp: Path, **extra: str) -> dict[str, str]:
    return {"VLLAMA_WORKERS": "2", "VLLAMA_METRICS_DIR": str(tmp / "metrics"), **extra}


def worker_pids(serve: Serve) -> list[int]:
    """The running workers (a killed one, a zombie until reaped, is not one)."""
    pids = []
    for p in psutil.Process(serve.proc.pid).children():
        with contextlib.suppress(psutil.ZombieProcess, psutil.NoSuchProcess):
            if p.status() != psutil.STATUS_ZOMBIE and "spawn" in " ".join(p.cmdline()):
                pids.append(p.pid)
    return pids


def wait_for_workers(serve: Serve, n: int = 2, timeout: float = 60) -> list[int]:
    def running() -> list[int] | None:
        pids = worker_pids(serve)
        return pids if len(pids) == n else None

    return wait_for(running, f"{n} workers running", timeout)


def chats_per_worker(metrics_dir: Path) -> dict[int, float]:
    """/api/chat requests each worker process counted (its own multiprocess file)."""
    out: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for family in MultiProcessCollector.merge([str(path)]):
            for s in family.samples:
                if s.name == "vllama_requests_total" and s.labels.get("route") == "/api/chat":
                    out[pid] = out.get(pid, 0.0) + s.value
    return out


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    )


def send_chats(url: str, n: int) -> list[dict[str, Any]]:
    """n chats over fresh connections, 8 at a time: the kernel hands them to both workers."""

    def one(_: int) -> dict[str, Any]:
        resp = httpx.post(f"{url}/api/chat", json=CHAT, timeout=60, headers={"Connection": "close"})
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def test_metrics_add_up_across_workers_and_survive_a_dead_worker(
    chat_engine: Engine, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    env = workers_env(tmp_path, VLLAMA_ALIASES="demo=vllama-demo")
    with run_serve(["--engine", chat_engine.url], tmp_path, env=env) as serve:
        first = wait_for_workers(serve)
        answers: list[dict[str, Any]] = []
        # Until both workers served some (bounded): the sums below must span two processes.
        while len(answers) < 200:
            answers += send_chats(serve.url, 16)
            per_worker = chats_per_worker(metrics_dir)
            if len([pid for pid in first if per_worker.get(pid, 0) > 0]) == 2:
                break
        assert all(per_worker.get(pid, 0) > 0 for pid in first), per_worker
        n = len(answers)
        prompt = sum(a["prompt_eval_count"] for a in answers)
        completion = sum(a["eval_count"] for a in answers)

        m = scrape(serve.url)
        assert total(m, "vllama_requests_total", route="/api/chat", status="200") == n
        assert total(m, "vllama_request_duration_seconds_count", route="/api/chat") == n
        assert total(m, "vllama_prompt_tokens_total", model="vllama-demo") == prompt
        assert total(m, "vllama_completion_tokens_total", model="vllama-demo") == completion
        assert total(m, "vllama_requests_in_flight", route="/api/chat") == 0
        # One series each, not one per worker (a gauge's default mode would add a pid label).
        assert m["vllama_build_info"] == [
            ({"version": m["vllama_build_info"][0][0]["version"]}, 1.0)
        ]
        assert m["vllama_engine_up"] == [({"engine": chat_engine.url}, 1.0)]
        assert [lab for lab, _ in m["vllama_requests_queued"]] == [{}]

        # Each worker holds its own alias registry: changing aliases at runtime is refused.
        copy = httpx.post(
            f"{serve.url}/api/copy", json={"source": "vllama-demo", "destination": "mine"}
        )
        assert copy.status_code == 409 and "2 worker processes" in copy.json()["error"]
        delete = httpx.request("DELETE", f"{serve.url}/api/delete", json={"model": "demo"})
        assert delete.status_code == 409 and "[aliases]" in delete.json()["error"]
        assert (
            httpx.post(f"{serve.url}/api/chat", json={**CHAT, "model": "demo"}).status_code == 200
        )

        # A worker killed outright: the parent starts another; what it counted stays counted.
        os.kill(first[0], signal.SIGKILL)
        wait_for(
            lambda: len(now := worker_pids(serve)) == 2 and sorted(now) != sorted(first),
            "a new worker in place of the killed one",
            60,
            interval=0.1,
        )
        assert "exited with code -9; starting a new one" in serve.text()
        send_chats(serve.url, 8)
        m = scrape(serve.url)
        assert total(m, "vllama_requests_total", route="/api/chat", status="200") == n + 9
        assert m["vllama_build_info"][0][1] == 1.0 and len(m["vllama_build_info"]) == 1

        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(60) == 0
    assert not metrics_dir.exists() or not any(metrics_dir.glob("gauge_live*"))
    assert port_free(serve.port)


def test_key_concurrency_holds_across_workers(tmp_path: Path) -> None:
    # The two admitted streams must still be running when the other six arrive: the real
    # tiny model ends 300 tokens (or its end-of-text token) sooner than eight fresh
    # connections reach two workers on a busy machine. The scripted engine's stalled stream
    # (headers and one event, then silence until the façade hangs up) holds them for as
    # long as the test needs. The slots come back once those clients hang up.
    keys = [{"key": "sk-batch-0123456789", "name": "batch", "max_concurrency": 2}]
    env = workers_env(tmp_path, VLLAMA_API_KEYS=json.dumps(keys))
    body = {**CHAT, "stream": True}
    headers = {"Authorization": "Bearer sk-batch-0123456789", "Connection": "close"}
    with (
        scripted_engine_thread(Script(stall_stream=True)) as stalled,
        run_serve(["--engine", stalled.url], tmp_path, env=env) as serve,
    ):
        wait_for_workers(serve)
        statuses: list[int] = []
        lock = threading.Lock()
        go, answered = threading.Barrier(8), threading.Barrier(8, timeout=60)

        def one() -> None:
            go.wait()
            with httpx.stream(
                "POST", f"{serve.url}/api/chat", json=body, headers=headers, timeout=60
            ) as resp:
                with lock:
                    statuses.append(resp.status_code)
                answered.wait()  # the admitted hold their slots until all eight have a status

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        # Eight at once over fresh connections reach both workers; two run, the rest are
        # refused. Per worker, four would have run.
        assert sorted(statuses) == [200, 200] + [429] * 6, statuses

        def admitted_again() -> bool:
            with httpx.stream(
                "POST", f"{serve.url}/api/chat", json=body, headers=headers, timeout=30
            ) as resp:
                return resp.status_code == 200

        wait_for(admitted_again, "a slot given back after the streams' clients hung up", 30)


def test_sigterm_says_draining_first_then_refuses(chat_engine: Engine, tmp_path: Path) -> None:
    env = workers_env(tmp_path, VLLAMA_DRAIN_DELAY_S="3")
    with run_serve(["--engine", chat_engine.url], tmp_path, env=env) as serve:
        wait_for_workers(serve)
        assert httpx.get(f"{serve.url}/health/ready", timeout=10).status_code == 200
        serve.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the signal reaches both workers
        # Still taking requests, on fresh connections to either worker, but not ready.
        for _ in range(6):
            ready = httpx.get(f"{serve.url}/health/ready", headers={"Connection": "close"})
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert send_chats(serve.url, 4)
        wait_for(lambda: refused(f"{serve.url}/health"), "still accepting after the delay", 10)
        assert serve.proc.wait(60) == 0
    assert port_free(serve.port)


def test_sigterm_lets_streams_in_flight_finish(chat_engine: Engine, tmp_path: Path) -> None:
    env = workers_env(tmp_path, **DRAIN_DELAY)
    with run_serve(["--engine", chat_engine.url], tmp_path, env=env) as serve:
        wait_for_workers(serve)
        results, sent = sigterm_during_streams(serve)
        wait_for(lambda: refused(f"{serve.url}/health"), "still accepting after SIGTERM", 10)
        assert serve.proc.wait(90) == 0
        assert_streams_completed(results, 4)
        assert max(r["ended"] for r in results) > sent
    assert port_free(serve.port)
