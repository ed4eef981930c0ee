"""`vllama serve --demo` with a REAL supervised vLLM engine (the CPU build), one engine for
every assertion, since each load takes a minute or two:

1. it builds/reuses the demo model and answers `ollama.chat` within its startup timeout;
   the engine runs in its own process group and logs to its file, not the terminal; its
   capabilities come from its arguments (a tool parser here), not from probes;
2. SIGKILL to the engine's process group: the supervisor restarts it (with backoff), the
   restart is counted in /metrics, and requests succeed again;
3. SIGTERM to `vllama serve` during streams: they complete, then no engine process and
   no listening port remain.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import ollama
import pytest

from tests.engines import CACHE
from tests.integration.test_cli_serve import (
    DRAIN_DELAY,
    assert_streams_completed,
    sigterm_during_streams,
)
from tests.procs import ProcessExited, wait_for
from tests.unit.cli.serve_proc import port_free, run_serve
from vllama.engine.supervisor import group_alive

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.timeout(1200)]

STARTUP_TIMEOUT_S = 600


def chat_ok(url: str) -> bool:
    try:
        with ollama.Client(host=url, timeout=30) as client:
            reply = client.chat(
                model="vllama-demo",
                messages=[{"role": "user", "content": "hi"}],
                options={"num_predict": 4},
            )
    except (ollama.ResponseError, OSError, ConnectionError):
        return False  # 503 while the engine restarts; the caller polls with a deadline
    return bool(reply.message.content) and reply.eval_count == 4


def restarts(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'^vllama_engine_restarts_total\{engine="([^"]+)"\} (\S+)$', text, re.M
        )
    }


def test_supervised_demo_engine(tmp_path: Path) -> None:
    env = {
        "VLLAMA_CACHE_DIR": str(CACHE / "models"),  # the demo model the session engines use
        "VLLAMA_ENGINE_STARTUP_TIMEOUT_S": str(STARTUP_TIMEOUT_S),
        "VLLAMA_DRAIN_TIMEOUT_S": "60",
        "VLLAMA_HEALTH_INTERVAL_S": "0.5",
        **DRAIN_DELAY,
    }
    started = time.monotonic()
    args = ["--demo", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    with run_serve(args, tmp_path, env=env, ready_timeout=STARTUP_TIMEOUT_S + 60) as serve:
        print(f"vllama serve --demo ready after {time.monotonic() - started:.0f}s")
        assert chat_ok(serve.url)
        with ollama.Client(host=serve.url, timeout=30) as client:
            show = client.show("vllama-demo")
        assert show.capabilities == ["completion", "tools"]
        assert "capabilities detected" not in serve.text()  # the arguments said it
        [engine_pid] = serve.children()
        assert os.getpgid(engine_pid) == engine_pid  # its own process group
        out = serve.text()
        engine_url = re.search(r"starting engine vllama-demo on (http://127\.0\.0\.1:\d+)", out)
        assert engine_url, out
        engine_url_s = engine_url.group(1)
        assert "engine(s) ready" in out
        [log] = (tmp_path / "logs").glob("engine-vllama-demo-*.log")
        assert "vllm.entrypoints.openai.api_server" in log.read_text()
        assert "Starting vLLM" in log.read_text() and "Starting vLLM" not in out

        # 2. A crash: the whole engine (API server + engine core) dies at once.
        os.killpg(engine_pid, signal.SIGKILL)
        crashed = time.monotonic()
        try:
            wait_for(
                lambda: restarts(serve.url).get(engine_url_s) == 1.0 and chat_ok(serve.url),
                "the engine restarted and answering",
                STARTUP_TIMEOUT_S,
                interval=1,
                proc=serve,
            )
        except (TimeoutError, ProcessExited) as exc:
            raise AssertionError(f"{exc}:\n{serve.tail()}") from None
        print(f"restarted and answering after {time.monotonic() - crashed:.0f}s")
        [new_pid] = serve.children()
        assert new_pid != engine_pid and not group_alive(engine_pid)
        assert "restarting engine vllama-demo" in serve.text()

        # 3. Drain on SIGTERM, then stop the engine.
        results, _ = sigterm_during_streams(serve)
        assert serve.proc.wait(120) == 0
        assert_streams_completed(results, 4)
        assert not group_alive(new_pid)
        assert port_free(serve.port)
        assert port_free(int(engine_url_s.rsplit(":", 1)[1]))
