"""Caddy and Nginx as the gateway of a fleet: one proxy in front of several real façades
(the real vLLM engine behind them), from proxy/ exactly as Ansible deploys it.

Each proxy is shown to balance by least connections, to skip a façade that is down
without losing a request (a request that never reached a façade goes to the next), and to
take a draining façade out of rotation and bring it back (Caddy: its active check of
/health/ready sees the drain file; Nginx, which has no active checks in its open-source
build: the façade rendered `down` and a graceful reload). That a sent request is never
sent again is read from each proxy's own configuration (Caddy's adapted JSON, Nginx's
rendered site).

Not here: streams held on a façade while it drains or dies. On these 2 cores vLLM's CPU
build starved its own API server under such streams (first chunks up to a minute apart,
its /health late, the façades' readiness 503): such tests did not give the same answer twice.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engines import Engine, free_port
from tests.ops.proxy_helpers import (
    CADDYFILE,
    PROXIES,
    Proxy,
    TestCA,
    caddy_command,
    make_test_ca,
    proxy_env,
    render_nginx,
    run,
    run_proxy,
)

pytestmark = [pytest.mark.timeout(600)]

MODEL = "vllama-demo"
HEALTH_INTERVAL_S = 0.5
# What Ansible's gateway sets (roles/vllama_proxy): readiness, checked often.
GATEWAY = {
    "VLLAMA_PROXY_HEALTH_URI": "/health/ready",
    "VLLAMA_PROXY_HEALTH_INTERVAL": f"{int(HEALTH_INTERVAL_S * 1000)}ms",
    # Many requests from one test client: the per-address limits are not under test here.
    "VLLAMA_PROXY_RATE_LIMIT": "1000r/s",
    "VLLAMA_PROXY_RATE_BURST": "1000",
}


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_test_ca(tmp_path_factory.mktemp("gateway-ca"))


def chat(stream: bool = False, tokens: int = 4) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "a b c d"}],
        "stream": stream,
        "options": {"num_predict": tokens, "temperature": 0},
    }


def metric(url: str, name: str, route: str = "/api/chat") -> float:
    """Sum of a façade metric's samples for one route (0 when the façade is gone)."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.TransportError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'route="{route}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def answered(url: str, route: str = "/api/chat") -> int:
    return int(metric(url, "vllama_requests_total", route))


def generate() -> dict[str, Any]:
    """A request on another route than the chats': counted apart on each façade."""
    return {"model": MODEL, "prompt": "a b", "stream": False, "options": {"num_predict": 4}}


def upstream(urls: list[str]) -> str:
    return " ".join(u.removeprefix("http://") for u in urls)


@contextlib.contextmanager
def facades(engine: Engine, tmp: Path, n: int) -> Iterator[list[tuple[str, Path]]]:
    """n real façades (`vllama serve`, one process each, as on n hosts) in front of the
    engine, each with its own state dir (where its drain file lives)."""
    from tests.unit.cli.serve_proc import run_serve

    with contextlib.ExitStack() as stack:
        out = []
        for i in range(n):
            state = tmp / f"facade-{i}"
            state.mkdir()
            env = {"VLLAMA_STATE_DIR": str(state), "VLLAMA_LOG_FORMAT": "text"}
            serve = stack.enter_context(run_serve(["--engine", engine.url], state, env=env))
            out.append((serve.url, state))
        yield out


# --- configuration (no façade needed) ---------------------------------------------------


def test_caddy_gateway_config_balances_checks_and_retries(test_ca: TestCA, tmp_path: Path) -> None:
    env = proxy_env(test_ca, "10.0.0.1:11434 10.0.0.2:11434", tmp_path, GATEWAY)
    res = run([caddy_command()[0], "adapt", "--config", str(CADDYFILE)], env)
    assert res.returncode == 0, res.stderr[-2000:]
    config = json.loads(res.stdout)
    proxies = [h for h in _walk(config) if h.get("handler") == "reverse_proxy"]
    assert proxies, "no reverse_proxy handler"
    for handler in proxies:
        assert [u["dial"] for u in handler["upstreams"]] == ["10.0.0.1:11434", "10.0.0.2:11434"]
        lb = handler["load_balancing"]
        assert lb["selection_policy"]["policy"] == "least_conn"
        assert lb["try_duration"] > 0
        assert "retry_match" not in lb  # POSTs are retried only when never sent
        checks = handler["health_checks"]
        assert checks["active"]["uri"] == "/health/ready"
        assert checks["passive"]["fail_duration"] > 0


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_nginx_gateway_config_marks_draining_facades_down(test_ca: TestCA, tmp_path: Path) -> None:
    env = proxy_env(
        test_ca,
        "10.0.0.1:11434,10.0.0.2:11434 10.0.0.3:11434",
        tmp_path,
        {**GATEWAY, "VLLAMA_PROXY_DRAINING": "10.0.0.2:11434"},
    )
    render_nginx(env, tmp_path)
    site = (tmp_path / "conf.d" / "vllama.conf").read_text()
    block = site[site.index("upstream vllama_facade") :].split("}", 1)[0]
    servers = [ln.strip() for ln in block.splitlines() if ln.strip().startswith("server ")]
    assert servers == [
        "server 10.0.0.1:11434 max_fails=1 fail_timeout=10s;",
        "server 10.0.0.2:11434 max_fails=1 fail_timeout=10s down;",
        "server 10.0.0.3:11434 max_fails=1 fail_timeout=10s;",
    ]
    assert "least_conn;" in block and "zone vllama_facade" in block
    retry = [
        ln.strip() for ln in site.splitlines() if ln.strip().startswith("proxy_next_upstream ")
    ]
    assert retry == ["proxy_next_upstream error timeout;"]  # never non_idempotent


# --- live: real façades behind each proxy -----------------------------------------------


@pytest.mark.engine
@pytest.mark.parametrize("kind", PROXIES)
def test_requests_spread_over_every_facade(
    kind: str, test_ca: TestCA, chat_engine: Engine, tmp_path: Path
) -> None:
    with (
        facades(chat_engine, tmp_path, 3) as fs,
        run_proxy(kind, test_ca, upstream([u for u, _ in fs]), tmp_path / kind, GATEWAY) as px,
        px.client(test_ca, timeout=120) as client,
        concurrent.futures.ThreadPoolExecutor(9) as pool,
    ):
        before = [answered(u) for u, _ in fs]
        # Nine streams at once: least connections hands each façade some.
        replies = list(pool.map(lambda _: client.post("/api/chat", json=chat(tokens=64)), range(9)))
        assert [r.status_code for r in replies] == [200] * 9
        served = [answered(u) - b for (u, _), b in zip(fs, before, strict=True)]
    assert sum(served) == 9 and all(n >= 1 for n in served), served


@pytest.mark.engine
@pytest.mark.parametrize("kind", PROXIES)
def test_a_dead_facade_costs_no_request(
    kind: str, test_ca: TestCA, chat_engine: Engine, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: every connection is refused
    # Active checks far apart: the requests themselves must find out and go elsewhere.
    overrides = {**GATEWAY, "VLLAMA_PROXY_HEALTH_INTERVAL": "1h"}
    with (
        facades(chat_engine, tmp_path, 2) as fs,
        run_proxy(kind, test_ca, f"{dead} {upstream([u for u, _ in fs])}", tmp_path / kind, overrides) as px,
        px.client(test_ca, timeout=120) as client,
        concurrent.futures.ThreadPoolExecutor(6) as pool,
    ):  # fmt: skip
        replies = list(pool.map(lambda _: client.post("/api/chat", json=chat()), range(18)))
    assert [r.status_code for r in replies] == [200] * 18, [r.text for r in replies]


@pytest.mark.engine
@pytest.mark.parametrize("kind", PROXIES)
def test_a_draining_facade_leaves_rotation_and_comes_back(
    kind: str, test_ca: TestCA, chat_engine: Engine, tmp_path: Path
) -> None:
    """The rolling-upgrade drain: the façade's drain file (Caddy: its active check of
    /health/ready sees 503; Nginx: rendered `down` and reloaded) takes it out of rotation
    while it still answers; removing the file brings it back."""
    with (
        facades(chat_engine, tmp_path, 2) as fs,
        run_proxy(kind, test_ca, upstream([u for u, _ in fs]), tmp_path / kind, GATEWAY) as px,
    ):
        (draining_url, state), other = fs[0], fs[1][0]
        _drain(px, draining_url, state)
        assert httpx.get(f"{draining_url}/api/tags", timeout=30).status_code == 200  # serving
        # New connections after the drain (one opened before a reload may carry one more
        # request through Nginx's old worker).
        with px.client(test_ca, timeout=120) as fresh:
            replies = [fresh.post("/api/generate", json=generate()) for _ in range(8)]
        assert [r.status_code for r in replies] == [200] * 8
        assert answered(draining_url, "/api/generate") == 0, "a draining façade got new requests"
        assert answered(other, "/api/generate") == 8
        _undrain(px, state)
        with (
            px.client(test_ca, timeout=120) as fresh,
            concurrent.futures.ThreadPoolExecutor(6) as pool,
        ):
            more = list(
                pool.map(lambda _: fresh.post("/api/chat", json=chat(tokens=32)), range(12))
            )
        assert all(r.status_code == 200 for r in more)
        assert answered(draining_url) > 0, "the façade did not come back into rotation"
        assert answered(other) > 0


def _drain(px: Proxy, url: str, state: Path) -> None:
    """What a rolling upgrade does before it stops a host, until it took effect."""
    (state / "draining").touch()
    if px.kind == "nginx":
        px.reload({"VLLAMA_PROXY_DRAINING": url.removeprefix("http://")})
    else:
        time.sleep(4 * HEALTH_INTERVAL_S)  # Caddy's active check sees readiness 503


def _undrain(px: Proxy, state: Path) -> None:
    (state / "draining").unlink()
    if px.kind == "nginx":
        px.reload({"VLLAMA_PROXY_DRAINING": ""})
    else:
        time.sleep(4 * HEALTH_INTERVAL_S)
