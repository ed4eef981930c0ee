"""Processes the benchmark starts and measures: the instant upstream, the façade, Nginx as a
plain reverse proxy, the LiteLLM proxy, a real vLLM engine. Each is started on a free
127.0.0.1 port and stopped by its own process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.engines import REPO, free_port, http_ok
from tests.perf.harness import tree_cpu_seconds

BENCH_DIR = REPO / ".cache" / "bench"
VENV_BIN = Path(sys.executable).parent
LITELLM_BIN = REPO / ".venv-bench" / "bin" / "litellm"
LITELLM_KEY = "sk-bench-0123456789abcdef"  # a local, throwaway master key LiteLLM insists on


@dataclass
class Proc:
    name: str
    url: str
    popen: subprocess.Popen[bytes]
    log: Path

    def wait_ready(self, path: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}); see {self.log}")
            if http_ok(self.url + path):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s; see {self.log}")

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.popen.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """CPU seconds of the process and its live children (harness.tree_cpu_seconds)."""
        return tree_cpu_seconds(self.popen.pid)

    def peak_rss_mb_per_process(self) -> dict[int, float]:
        """Peak resident set (VmHWM) of each process in the tree, in MB."""
        peaks: dict[int, float] = {}
        for p in self._tree():
            with contextlib.suppress(OSError, psutil.Error):
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[p.pid] = round(int(line.split()[1]) / 1024, 1)
        return peaks

    def peak_rss_mb(self) -> float:
        """The largest peak resident set of one process in the tree (one worker), in MB."""
        return max(self.peak_rss_mb_per_process().values(), default=0.0)

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


def spawn(name: str, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    port = int(cmd[cmd.index("--port") + 1]) if "--port" in cmd else 0
    log = BENCH_DIR / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return Proc(name, f"http://127.0.0.1:{port}", popen, log)


@contextlib.contextmanager
def running(proc: Proc, ready_path: str, timeout: float = 120.0) -> Iterator[Proc]:
    try:
        proc.wait_ready(ready_path, timeout)
        yield proc
    finally:
        proc.stop()


def instant_upstream(
    chunks: int = 16,
    break_after: int | None = None,
    interval_ms: float = 0.0,
    request_metrics_ms: float | None = None,
) -> Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "tests.perf.instant_upstream", "--port", str(port)]
    cmd += ["--chunks", str(chunks), "--interval-ms", str(interval_ms)]
    if break_after is not None:
        cmd += ["--break-after", str(break_after)]
    if request_metrics_ms is not None:
        cmd += ["--request-metrics", str(request_metrics_ms)]
    return spawn("instant-upstream", cmd)


def facade(engine_url: str, name: str = "facade", app_dir: Path | None = None) -> Proc:
    """The façade as operators run it: `vllama serve --engine URL` with default settings.
    `app_dir` (another checkout's `app/`) runs that code instead of the installed one."""
    port = free_port()
    cmd = [str(VENV_BIN / "vllama"), "serve", "--engine", engine_url, "--port", str(port)]
    env = {"VLLAMA_LOG_FORMAT": "json"}
    if app_dir is not None:
        env["PYTHONPATH"] = str(app_dir)
    return spawn(name, cmd, env=env)


def nginx(*upstream_urls: str, name: str = "nginx") -> Proc:
    """Nginx as a plain streaming reverse proxy: the floor for any proxy. Several upstreams
    are balanced by least connections (several façade processes behind one proxy)."""
    port = free_port()
    prefix = Path(tempfile.mkdtemp(prefix="nginx-bench-", dir=BENCH_DIR.parent))
    servers = " ".join(f"server {u.removeprefix('http://')};" for u in upstream_urls)
    balance = "least_conn; " if len(upstream_urls) > 1 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  upstream engine {{ {balance}{servers} keepalive 512; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://engine;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 3600s;
    }}
  }}
}}
""")
    proc = spawn(name, ["nginx", "-p", str(prefix), "-c", str(conf)])
    proc.url = f"http://127.0.0.1:{port}"
    return proc


def litellm(upstream_url: str) -> Proc | None:
    """LiteLLM's proxy (what Python users pick today), from its own venv (`make bench` sets it up)."""
    if not LITELLM_BIN.exists():
        return None
    port = free_port()
    conf = BENCH_DIR / "litellm.yaml"
    conf.write_text(f"""model_list:
  - model_name: vllama-demo
    litellm_params:
      model: openai/vllama-demo
      api_base: {upstream_url}/v1
      api_key: none
litellm_settings:
  telemetry: false
""")
    env = {
        "LITELLM_MASTER_KEY": LITELLM_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
    }
    return spawn(
        "litellm",
        [
            str(LITELLM_BIN),
            "--config",
            str(conf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        env,
    )


def upstream_stats(url: str) -> dict[str, float]:
    """The instant upstream's counters: requests, aborted streams, its CPU seconds."""
    import json

    with urllib.request.urlopen(url + "/_stats", timeout=5) as resp:
        return dict(json.loads(resp.read()))
