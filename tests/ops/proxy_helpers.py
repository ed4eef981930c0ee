"""Real Caddy and Nginx in front of a façade, for tests/ops/test_proxy.py.

The proxies run from the repository's configs exactly as compose and Ansible use them
(environment variables for every site value), on free 127.0.0.1 ports, with a test CA
made per session by openssl. Each proxy is started and stopped with tests.procs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests import procs
from tests.engines import CHAT_MODEL, Engine, start_engine
from tests.procs import REPO, free_port

CADDYFILE = REPO / "proxy" / "caddy" / "Caddyfile"
NGINX_DIR = REPO / "proxy" / "nginx"
PROXIES = ("caddy", "nginx")
MONITORING_CLIENT = "127.0.0.1"  # allowed to read /metrics (127.0.0.1/32)
OTHER_CLIENT = "127.0.0.2"  # also loopback, but outside the monitoring network


def require(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: run scripts/install-system-deps.sh")
    return path


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)


@dataclass(frozen=True)
class TestCA:
    __test__ = False  # not a test class, despite the name

    ca_cert: Path
    cert: Path  # leaf for localhost and 127.0.0.1, signed by ca_cert
    key: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_cert))


def make_test_ca(directory: Path) -> TestCA:
    """A throwaway CA and a server certificate it signed (EC P-256, one day)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    openssl = require("openssl")
    steps = [
        [openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(ca_key)],
        [openssl, "req", "-x509", "-new", "-key", str(ca_key), "-days", "1", "-subj",
         "/CN=vllama test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(ca_cert)],
        [openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
        [openssl, "req", "-new", "-key", str(key), "-subj", "/CN=localhost", "-out", str(csr)],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(cert)],
    ]  # fmt: skip
    for cmd in steps:
        result = run(cmd)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed: {result.stderr}")
    return TestCA(ca_cert, cert, key)


@dataclass
class Proxy:
    kind: str
    https_url: str
    http_url: str
    metrics_url: str  # the proxy's own metrics endpoint
    access_log: Path
    env: dict[str, str]
    state: Path
    pid: int

    def reload(self, overrides: dict[str, str]) -> None:
        """Apply new VLLAMA_PROXY_* values the way a deployment does: Caddy re-reads its
        Caddyfile through its admin API (`caddy reload`), Nginx gets its site re-rendered
        and SIGHUP. Both are graceful: requests in flight finish on the old config."""
        self.env.update(overrides)
        if self.kind == "caddy":
            result = run(
                [*caddy_command()[:1], "reload", "--config", str(CADDYFILE), "--adapter",
                 "caddyfile", "--address", self.env["VLLAMA_PROXY_ADMIN"]],
                self.env,
            )  # fmt: skip
            if result.returncode != 0:
                raise RuntimeError(f"caddy reload failed: {result.stderr[-2000:]}")
        else:
            render_nginx(self.env, self.state)
            os.kill(self.pid, signal.SIGHUP)
        time.sleep(1)  # new workers / servers take over

    def client(self, ca: TestCA, source: str = MONITORING_CLIENT, **kw: object) -> httpx.Client:
        """An HTTPS client trusting the test CA, connecting from `source` (a loopback IP)."""
        transport = httpx.HTTPTransport(verify=ca.context(), local_address=source)
        return httpx.Client(base_url=self.https_url, transport=transport, **kw)  # type: ignore[arg-type]


def proxy_env(
    ca: TestCA, upstream: str, state: Path, overrides: dict[str, str] | None = None
) -> dict[str, str]:
    """The VLLAMA_PROXY_* environment a test proxy runs with (free ports, temp paths)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLAMA_PROXY_")}
    https_port = free_port()
    env.update(
        HOME=str(state),
        XDG_DATA_HOME=str(state / "data"),
        XDG_CONFIG_HOME=str(state / "config"),
        VLLAMA_PROXY_HOSTNAME="localhost",
        VLLAMA_PROXY_BIND="127.0.0.1",
        VLLAMA_PROXY_HTTP_PORT=str(free_port()),
        VLLAMA_PROXY_HTTPS_PORT=str(https_port),
        VLLAMA_PROXY_REDIRECT_PORT=f":{https_port}",
        VLLAMA_PROXY_METRICS_BIND="127.0.0.1",
        VLLAMA_PROXY_METRICS_PORT=str(free_port()),
        VLLAMA_PROXY_ADMIN=f"127.0.0.1:{free_port()}",
        VLLAMA_PROXY_TLS_MODE="files",
        VLLAMA_PROXY_TLS_CERT=str(ca.cert),
        VLLAMA_PROXY_TLS_KEY=str(ca.key),
        VLLAMA_PROXY_UPSTREAM=upstream.removeprefix("http://"),
        VLLAMA_PROXY_MONITORING_CIDRS=f"{MONITORING_CLIENT}/32",
        VLLAMA_PROXY_ACCESS_LOG=str(state / "access.log"),
    )
    env.update(overrides or {})
    return env


def render_nginx(env: dict[str, str], state: Path) -> Path:
    """nginx.conf and the rendered conf.d/ in `state`, as render-templates.sh writes them."""
    shutil.copy(NGINX_DIR / "nginx.conf", state / "nginx.conf")
    shutil.copy(Path("/etc/nginx/mime.types"), state / "mime.types")
    result = run(["sh", str(NGINX_DIR / "render-templates.sh"), str(state / "conf.d")], env)
    if result.returncode != 0:
        raise RuntimeError(f"render-templates.sh failed: {result.stderr}")
    return state / "nginx.conf"


def nginx_command(conf: Path, state: Path) -> list[str]:
    # pid and error log go to the temp dir; everything else is the shipped config.
    directives = f"daemon off; pid {state / 'nginx.pid'}; error_log {state / 'error.log'} info;"
    return [require("nginx"), "-p", str(state), "-c", str(conf), "-g", directives]


def caddy_command() -> list[str]:
    return [require("caddy"), "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def run_proxy(
    kind: str, ca: TestCA, upstream: str, state: Path, overrides: dict[str, str] | None = None
) -> Iterator[Proxy]:
    """Start Caddy or Nginx in front of `upstream`; stop it by pid afterwards."""
    state.mkdir(parents=True, exist_ok=True)
    env = proxy_env(ca, upstream, state, overrides)
    if kind == "caddy":
        cmd = caddy_command()
        metrics_path = "/metrics"
    else:
        cmd = nginx_command(render_nginx(env, state), state)
        metrics_path = "/stub_status"
    process = procs.start(kind, cmd, state / f"{kind}.log", env=env, cwd=state)
    https_port = int(env["VLLAMA_PROXY_HTTPS_PORT"])
    proxy = Proxy(
        kind=kind,
        https_url=f"https://localhost:{https_port}",
        http_url=f"http://localhost:{env['VLLAMA_PROXY_HTTP_PORT']}",
        metrics_url=f"http://127.0.0.1:{env['VLLAMA_PROXY_METRICS_PORT']}{metrics_path}",
        access_log=Path(env["VLLAMA_PROXY_ACCESS_LOG"]),
        env=env,
        state=state,
        pid=process.pid,
    )
    with procs.running(process, lambda: _port_open(https_port) and _health_ok(proxy, ca), 30, 10):
        yield proxy


def _health_ok(proxy: Proxy, ca: TestCA) -> bool:
    try:
        with proxy.client(ca, timeout=2) as c:
            return c.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def stats_engine(*extra_args: str) -> Iterator[Engine]:
    """A chat engine of our own, so its vllm:* counters see only this suite's requests.

    While iterating, point VLLAMA_TEST_STATS_ENGINE at one nobody else uses.
    """
    url = os.environ.get("VLLAMA_TEST_STATS_ENGINE")
    if url:
        yield Engine("chat", url.rstrip("/"), CHAT_MODEL)
        return
    engine = start_engine("chat", extra_args=list(extra_args))
    try:
        yield engine
    finally:
        engine.stop()


def engine_counts(engine: Engine) -> tuple[int, int]:
    """(vllm:num_requests_running, vllm:generation_tokens_total) from the engine's /metrics.

    vLLM does not count aborted requests in request_success_total, but the tokens it
    generated show whether a request ran to its end or was cut short.
    """
    text = httpx.get(f"{engine.url}/metrics", timeout=10).text
    running = tokens = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_running"):
            running += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:generation_tokens_total"):
            tokens += float(line.rsplit(" ", 1)[1])
    return int(running), int(tokens)
