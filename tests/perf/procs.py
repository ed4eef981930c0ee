"""Processes the benchmark starts and measures: the instant upstream, the façade, Nginx as a
plain reverse proxy, the LiteLLM proxy. Each is started with tests.procs on a free
127.0.0.1 port (logs in .cache/bench/) and stopped by its own process group; `Measured`
adds the CPU and memory figures of its process tree."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import psutil

from tests import procs
from tests.perf.harness import tree_cpu_seconds
from tests.procs import REPO, free_port, running, upstream_stats

__all__ = [
    "Measured",
    "facade",
    "instant_upstream",
    "litellm",
    "nginx",
    "running",
    "upstream_stats",
]

BENCH_DIR = REPO / ".cache" / "bench"
LITELLM_BIN = REPO / ".venv-bench" / "bin" / "litellm"
LITELLM_KEY = "sk-bench-0123456789abcdef"  # a local, throwaway master key LiteLLM insists on


class Measured(procs.Proc):
    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """CPU seconds of the process and its live children (harness.tree_cpu_seconds)."""
        return tree_cpu_seconds(self.pid)

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


def spawn(name: str, cmd: list[str], port: int, env: dict[str, str] | None = None) -> Measured:
    """Any other benchmarked process serving HTTP on `port` (log in .cache/bench/)."""
    url = f"http://127.0.0.1:{port}"
    return procs.start(name, cmd, BENCH_DIR / f"{name}.log", url=url, env=env, kind=Measured)


def instant_upstream(
    chunks: int = 16,
    break_after: int | None = None,
    interval_ms: float = 0.0,
    request_metrics_ms: float | None = None,
) -> Measured:
    return procs.instant_upstream(
        chunks,
        break_after,
        interval_ms,
        request_metrics_ms=request_metrics_ms,
        logs=BENCH_DIR,
        kind=Measured,
    )


def facade(
    engine_url: str | list[str],
    name: str = "facade",
    app_dir: Path | None = None,
    *,
    extra_env: dict[str, str] | None = None,
) -> Measured:
    """The façade as operators run it: `vllama serve --engine URL` (one or several) with
    default settings (`extra_env`: VLLAMA_* settings to change, e.g. VLLAMA_WORKERS).
    `app_dir` (another checkout's `app/`) runs that code instead of this one."""
    urls = [engine_url] if isinstance(engine_url, str) else engine_url
    engines = [arg for url in urls for arg in ("--engine", url)]
    env = {"VLLAMA_LOG_FORMAT": "json", **(extra_env or {})}
    if app_dir is not None:
        env["PYTHONPATH"] = str(app_dir)
    return procs.vllama_serve(engines, BENCH_DIR / f"{name}.log", name=name, env=env, kind=Measured)


def nginx(*upstream_urls: str, name: str = "nginx") -> Measured:
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
    return spawn(name, ["nginx", "-p", str(prefix), "-c", str(conf)], port)


def litellm(upstream_url: str) -> Measured | None:
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
        port,
        env,
    )
