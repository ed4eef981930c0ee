"""ops/gpu_check.py (`make gpu-check`) on a machine without a GPU: every step a CPU can run
runs for real (`vllama doctor`, `vllama serve` fronting the session's real vLLM CPU engine,
an Ollama chat through the façade and through the shipped Caddyfile on a real Caddy); the
GPU steps fail saying "no GPU", and so the exit status is non-zero. The DCGM step reads a
real HTTP server answering with a recorded dcgm-exporter page (the exporter needs a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.engines import Engine
from tests.ops.conftest import FIXTURES, REPO, binary

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]
SCRIPT = REPO / "ops" / "gpu_check.py"


@pytest.fixture(scope="module")
def recorded_dcgm() -> Iterator[str]:
    """A stand-in for dcgm-exporter (no GPU here): its recorded /metrics page, served."""
    page = (FIXTURES / "dcgm-exporter-recorded-rtx4000ada.prom").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()  # warnings are errors: the listening socket must not leak


def gpu_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )


def test_without_a_gpu_the_cpu_steps_pass_and_the_gpu_steps_say_no_gpu(
    chat_engine: Engine, recorded_dcgm: str
) -> None:
    binary("caddy")
    res = gpu_check("--engine", chat_engine.url, "--dcgm-url", recorded_dcgm, "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads(res.stdout)
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["gpu", "doctor", "serve", "facade", "nvml", "proxy", "dcgm"]
    assert report["ok"] is False
    for name in ("gpu", "nvml"):
        assert steps[name]["status"] == "fail" and "no GPU" in steps[name]["detail"], steps[name]
    for name in ("serve", "facade", "proxy", "dcgm"):
        assert steps[name]["status"] == "pass", steps[name]
    assert "vllama-demo" in steps["facade"]["detail"]


def test_the_table_says_what_passed_and_what_did_not(chat_engine: Engine) -> None:
    # No --engine: without a GPU no model can be served, and the check says why.
    res = gpu_check("--dcgm-url", "http://127.0.0.1:9/metrics", "--timeout", "5")
    assert res.returncode == 1
    table = res.stdout
    assert table.splitlines()[0].split() == ["step", "result", "seconds", "detail"]
    assert "no GPU: a model needs a GPU here" in table
    assert "no DCGM exporter at http://127.0.0.1:9/metrics" in table
    assert table.strip().splitlines()[-1].endswith("failed")
