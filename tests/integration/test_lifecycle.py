"""Ollama's model lifecycle on the real thing (issue 15): one real `vllama serve` with no
engine at start, models downloaded through the real local hub (tests/hub.py), real vLLM
engines (the CPU build) started on demand, the real `ollama` client and `vllama run` in a
pseudo-terminal.

Engine starts are the cost (a minute or more each here), so one module-scoped façade
runs one sequence of steps that asserts at each step; four engine starts in all:
chat model A (once for three concurrent first requests), B (evicting A), A again, and the
embedding model. The budget ("4GiB" of host memory) fits one engine at a time: each
needs 2.5 GiB of overhead on the CPU build (lifecycle.memory).

Engines run with --enforce-eager: torch.compile's warm-up takes 45-140 s per new model on
these two cores and has nothing to do with when engines start and stop.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ollama
import pytest

from tests.engines import free_port, http_ok
from tests.hub import DEMO_B_REPO, DEMO_REPO, EMBED_REPO, Hub
from tests.procs import wait_for
from tests.terminal import Terminal
from tests.unit.cli.serve_proc import Serve, run_serve

pytestmark = [pytest.mark.engine, pytest.mark.slow]

A, B = DEMO_REPO, DEMO_B_REPO
KEEP = "10m"  # what the chat steps ask for; the façade's default is DEFAULT_KEEP_ALIVE
DEFAULT_KEEP_ALIVE_S = 8
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r|[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] [^\n]*?\(\d+(?:m\d\d)?s\)")


@dataclass
class Facade:
    serve: Serve
    client: ollama.Client
    tmp: Path
    env: dict[str, str]

    def ps(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.serve.url}/api/ps", timeout=10) as resp:
            return list(json.loads(resp.read())["models"])

    def loaded(self) -> list[str]:
        return sorted(m["name"] for m in self.ps())

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"{self.serve.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
                inside = line[line.find("{") + 1 : line.find("}")] if "{" in line else ""
                if ",".join(sorted(inside.split(","))) == want or (not labels and not inside):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def argv(self, *args: str) -> list[str]:
        """A `vllama` command line that asks this façade."""
        return [sys.executable, "-m", "vllama.cli.main", *args, "--port", str(self.serve.port)]

    def vllama(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.tmp,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def facade(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Facade]:
    tmp = tmp_path_factory.mktemp("lifecycle")
    env = {
        "HF_ENDPOINT": hub.url,
        "HOME": str(tmp),  # `vllama run` keeps its history under ~/.vllama
        "VLLAMA_CACHE_DIR": str(tmp / "cache"),
        "VLLAMA_MEMORY_BUDGET": "4GiB",
        "VLLAMA_KEEP_ALIVE": f"{DEFAULT_KEEP_ALIVE_S}s",
        "VLLAMA_ENGINE_WAIT_S": "1",
    }
    with (
        run_serve(["--", "--enforce-eager"], tmp, env=env) as serve,
        ollama.Client(host=serve.url, timeout=900) as client,  # closes its connections
    ):
        yield Facade(serve, client, tmp, {**os.environ, **env, "XDG_CONFIG_HOME": str(tmp)})
        print(serve.text()[-6000:])  # shown when a step failed


def _expires_in(model: dict[str, Any]) -> float:
    return datetime.fromisoformat(model["expires_at"]).timestamp() - time.time()


@contextlib.contextmanager
def held_stream(port: int, model: str) -> Iterator[None]:
    """A long generation of `model` (16 × 1500 tokens, seconds even on an idle machine),
    streamed to a client that reads its first event and then nothing: its engine stays
    busy at least until it has generated all of it."""
    body = json.dumps(
        {
            "model": model,
            "prompt": "hi",
            "n": 16,
            "max_tokens": 1500,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
        sock.settimeout(120)
        sock.connect(("127.0.0.1", port))
        head = (
            "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        first = b""
        while b"data: " not in first and len(first) < 65536:
            chunk = sock.recv(2048)
            assert chunk, first
            first += chunk
        assert first.startswith(b"HTTP/1.1 200") and b"data: " in first, first
        yield


def test_models_load_on_demand_swap_and_unload(facade: Facade) -> None:
    client = facade.client

    # 1. Nothing loaded. Pulls through the hub: Ollama-shaped progress, and each pulled
    #    model is listed (servable) at once. `all-minilm` is an Ollama library name.
    assert facade.ps() == []
    for name in (A, B, "all-minilm"):
        events = list(client.pull(name, stream=True))
        assert events[0].status == "pulling manifest" and events[-1].status == "success"
        files = [e for e in events if e.digest]
        assert files and files[-1].completed == files[-1].total
    listed = {m.model for m in client.list().models}
    assert {f"{A}:latest", f"{B}:latest", f"{EMBED_REPO}:latest"} <= listed
    assert facade.ps() == []  # listed, not loaded

    # 2. Three concurrent first requests for A: one engine start, three answers, a real
    #    load_duration for each of them (they all waited for it).
    answers: list[Any] = []

    def ask() -> None:
        answers.append(
            client.generate(model=A, prompt="hi", keep_alive=KEEP, options={"num_predict": 4})
        )

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert len(answers) == 3 and all(a.done and a.eval_count for a in answers)
    assert facade.metric("vllama_model_loads_total", model=A, how="start") == 1
    assert min(a.load_duration for a in answers) > 5e9  # an engine start, measured
    warm = client.generate(model=A, prompt="hi", keep_alive=KEEP, options={"num_predict": 2})
    assert warm.load_duration < 1e9  # loaded: routing only
    [ps] = facade.ps()
    assert ps["name"] == f"{A}:latest" and ps["context_length"] == 2048
    assert 9 * 60 < _expires_in(ps) <= 10 * 60  # its own keep_alive, counted from idle
    assert ps["size"] > 500e6 and ps["size_vram"] == 0  # resident memory; CPU build

    # 3. B, asking to unload right after (keep_alive 0): A goes first (the budget fits
    #    one), B loads, answers, and goes at once.
    answer = client.chat(
        model=B,
        messages=[{"role": "user", "content": "hi"}],
        keep_alive=0,
        options={"num_predict": 4},
    )
    assert answer.message.content and answer.load_duration > 5e9
    wait_for(
        lambda: facade.loaded() == [], "B unloaded at once after keep_alive 0", 10, interval=0.5
    )
    log = facade.serve.text()
    assert f"unloading model {A} (least recently used) to make room for {B}" in log
    assert facade.metric("vllama_model_unloads_total", model=A, reason="evicted") == 1
    assert facade.metric("vllama_model_unloads_total", model=B, reason="keep_alive") == 1

    # 4. A again, streamed: loaded once more.
    chunks = list(
        client.chat(
            model=A,
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            keep_alive=KEEP,
            options={"num_predict": 16},
        )
    )
    assert len([c for c in chunks if c.message.content]) > 1 and chunks[-1].done
    assert chunks[-1].load_duration > 5e9
    assert facade.metric("vllama_model_loads_total", model=A, how="start") == 2
    assert facade.loaded() == [f"{A}:latest"]

    # 5. `vllama run` in a terminal: a streamed answer (the same text the API gives for the
    #    same greedy request), then /bye. `vllama ps` shows what is loaded and until when.
    options = {"temperature": 0, "num_predict": 16}
    expected = client.chat(
        model=A, messages=[{"role": "user", "content": "hello"}], keep_alive=KEEP, options=options
    ).message.content
    with Terminal(
        facade.argv("run", A, "--keepalive", KEEP), {**facade.env, "TERM": "dumb"}, facade.tmp
    ) as term:
        term.read_until(">>> ", 120)
        term.type("/set parameter temperature 0")
        term.read_until("Set parameter 'temperature' to '0'", 30)
        term.type("/set parameter num_predict 16")
        term.read_until(">>> ", 30)
        term.type("hello")
        shown = term.read_until(">>> ", 120)
        term.type("/bye")
        assert term.close() == 0
    text = ANSI.sub("", shown)
    assert expected and expected.strip() in text, (expected, text)
    once = subprocess.run(  # a prompt argument plus piped stdin: one answer, no chat
        facade.argv("run", A, "--keepalive", KEEP, "and this"),
        input="say something",
        capture_output=True,
        text=True,
        env=facade.env,
        timeout=300,
        check=False,
    )
    assert once.returncode == 0 and once.stdout.endswith("\n\n") and once.stdout.strip()
    ps_out = facade.vllama("ps")
    assert ps_out.returncode == 0, ps_out.stderr
    row = next(line for line in ps_out.stdout.splitlines() if line.startswith(A))
    assert "100% CPU" in row and "minutes from now" in row and "2048" in row

    # 6. While A is busy, B cannot have its memory: after waiting engine_wait_s (1 s) it
    #    is refused with what is loaded and what it needs.
    with held_stream(facade.serve.port, A), pytest.raises(ollama.ResponseError) as refused:
        client.generate(model=B, prompt="hi")
    assert refused.value.status_code == 503
    message = str(refused.value)
    assert f"cannot load model '{B}'" in message and f"'{A}'" in message and "busy" in message
    assert "budget host memory 4.0 GiB" in message and "vllama stop" in message
    assert facade.loaded() == [f"{A}:latest"]

    # 7. `vllama stop A`: unloaded at once.
    stopped = facade.vllama("stop", A)
    assert stopped.returncode == 0, stopped.stderr
    assert facade.loaded() == []

    # 8. The embedding model by its library name, with the façade's default keep_alive
    #    (8 s): loaded, listed with that expiry, then unloaded after idling.
    vectors = client.embed(model="all-minilm", input=["a cat sits on the mat", "tax"])
    assert len(vectors.embeddings) == 2 and len(vectors.embeddings[0]) == 384
    [ps] = facade.ps()
    assert ps["name"] == f"{EMBED_REPO}:latest"
    assert 0 < _expires_in(ps) <= DEFAULT_KEEP_ALIVE_S
    idle_since = time.monotonic()
    wait_for(
        lambda: facade.loaded() == [], "the embedding model unloaded after idling", 60, interval=0.5
    )
    assert time.monotonic() - idle_since >= DEFAULT_KEEP_ALIVE_S - 2
    assert facade.metric("vllama_model_loads_total", model=EMBED_REPO, how="start") == 1


def test_pulled_models_are_described_and_copied_without_loading(facade: Facade) -> None:
    """/api/show answers for a pulled model with no engine (`ollama run` asks it first),
    and `vllama cp` names it: neither starts an engine."""
    client = facade.client
    client.pull(B)
    before = facade.metric("vllama_model_loads_total", model=B, how="start")
    shown = client.show(B)
    assert shown.modelinfo and shown.modelinfo["general.architecture"] == "llama"
    assert "completion" in (shown.capabilities or [])
    copied = facade.vllama("cp", B, "my-b")
    assert copied.returncode == 0 and f"copied '{B}' to 'my-b'" in copied.stdout
    assert "my-b:latest" in {m.model for m in client.list().models}
    assert client.show("my-b").details.family == "llama"
    assert facade.metric("vllama_model_loads_total", model=B, how="start") == before
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404
    stop = facade.vllama("stop", "no-such-model")
    assert stop.returncode == 1 and "couldn't find model" in stop.stderr


def test_serve_logs_are_text_on_a_terminal_and_json_otherwise(tmp_path: Path) -> None:
    """No engine needed: `vllama serve` with nothing pulled starts in seconds."""
    port = free_port()
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path),
        "VLLAMA_CACHE_DIR": str(tmp_path / "c"),
        "VLLAMA_LOG_DIR": str(tmp_path / "logs"),
        "TERM": "dumb",
    }
    env.pop("VLLAMA_LOG_FORMAT", None)
    with Terminal(
        [sys.executable, "-m", "vllama.cli.main", "serve", "--port", str(port)], env, tmp_path
    ) as term:
        term.read_until("Uvicorn running on", 60)  # listening (startup completes just before)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/api/tags", timeout=10), "/api/tags", 30)
        lines = term.read_until("status=200", 30)
        term.proc.send_signal(signal.SIGINT)
        assert term.close() == 0
    logged = [ln for ln in term.output.splitlines() if " INFO " in ln]
    assert logged and not any(ln.lstrip("\r\x1b[K").startswith("{") for ln in logged)
    assert "INFO vllama.access: request" in lines and "route=/api/tags" in lines
    # Not a terminal: JSON lines, one object each.
    with run_serve([], tmp_path, env={"VLLAMA_LOG_FORMAT": "auto"}) as serve:
        assert http_ok(f"{serve.url}/api/tags")
        time.sleep(0.5)
        text = serve.text()
    records = [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]
    assert any(r.get("route") == "/api/tags" for r in records)
