"""`vllama engine` started the way systemd's engine unit starts it (options from the
environment only) runs a REAL vLLM engine (the CPU build): it replaces itself with vLLM's
server (signals reach vLLM directly), and a JSON-valued flag passed through
VLLAMA_ENGINE_ARGS arrives whole: vLLM applies `--override-generation-config`, so a
request that names no max_tokens stops at the overridden limit."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest

from tests import procs
from tests.engines import demo_model_dir
from tests.procs import free_port
from vllama.engine.launch import ENGINE_MODULE

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.timeout(600)]

LIMIT = 3  # tokens: the override below; the demo model would otherwise run to 512


def test_engine_from_the_environment_keeps_json_flags(tmp_path: Path) -> None:
    port = free_port()
    flags = [
        "--max-model-len", "512",
        "--seed", "0",
        "--override-generation-config", json.dumps({"max_new_tokens": LIMIT, "temperature": 0}),
    ]  # fmt: skip
    env = {
        "VLLAMA_ENGINE_MODEL": str(demo_model_dir()),
        "VLLAMA_ENGINE_NAME": "vllama-demo",
        "VLLAMA_ENGINE_PORT": str(port),
        "VLLAMA_ENGINE_ARGS": json.dumps(flags),
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    cmd = [sys.executable, "-m", "vllama.cli.main", "engine"]
    url = f"http://127.0.0.1:{port}"
    engine = procs.start("vllama engine", cmd, tmp_path / "engine.log", url=url, env=env)
    with procs.running(engine, "/health", 420, grace=60):
        # exec, not a child: the process systemd started is vLLM's server itself.
        cmdline = Path(f"/proc/{engine.pid}/cmdline").read_bytes().split(b"\0")
        assert ENGINE_MODULE.encode() in cmdline
        body = json.dumps(
            {"model": "vllama-demo", "messages": [{"role": "user", "content": "hello there"}]}
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = json.load(resp)
        assert answer["usage"]["completion_tokens"] == LIMIT, answer
        assert answer["choices"][0]["finish_reason"] == "length"
