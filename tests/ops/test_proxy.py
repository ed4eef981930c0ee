"""Caddy and Nginx, from proxy/, in front of the real façade and a real vLLM engine.

One suite, parametrised over both proxies: TLS with a per-session test CA, streams that
are never buffered, the path allowlist, body and rate limits, /metrics for the
monitoring network only, request ids in JSON access logs, and a client hang-up that
reaches the engine. Caddy has no native rate limiter, so its 429 comes from the façade's
own limiter (settings.rate_limit_per_minute) - tested here through Caddy.
"""

from __future__ import annotations

import concurrent.futures
import json
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engines import Engine
from tests.ops.proxy_helpers import (
    CADDYFILE,
    NGINX_DIR,
    OTHER_CLIENT,
    PROXIES,
    Proxy,
    TestCA,
    caddy_command,
    engine_counts,
    make_test_ca,
    nginx_command,
    proxy_env,
    render_nginx,
    require,
    run,
    run_proxy,
    stats_engine,
)
from tests.procs import wait_for

# Generous: the first test may wait for the session engines, the last one starts its own.
pytestmark = pytest.mark.timeout(600)

BODY_LIMIT = 1024 * 1024  # small, so the oversize test sends 2 MiB, not 32
SECURITY_HEADERS = {
    "strict-transport-security": "max-age=31536000",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'none'",
}
MODEL = "vllama-demo"
LONG = 2000  # tokens: about the demo model's whole context (2048), a stream of seconds
HANGUP_LONG = 16000  # tokens: a generation that outlasts any proxy's notice of a hang-up


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_test_ca(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture(scope="module")
def own_engine() -> Iterator[Engine]:
    """A chat engine of this module's own (stream timings, token counts), with a context of
    HANGUP_LONG + 384 tokens: on an idle machine even 2000 tokens (the demo model's own
    2048-position limit) ended before Nginx saw a hang-up. Its rotary embeddings extend to
    any length; the random weights make no worse text past 2048."""
    context = HANGUP_LONG + 384
    overrides = json.dumps({"max_position_embeddings": context})
    with stats_engine("--max-model-len", str(context), "--hf-overrides", overrides) as engine:
        yield engine


@pytest.fixture(scope="module")
def facade(own_engine: Engine) -> Iterator[str]:
    """The real façade in front of an engine no other session's tests load (timings)."""
    from tests.facade import run_facade

    with run_facade(engines=[{"url": own_engine.url}], log_format="text") as url:
        yield url


@pytest.fixture(scope="module", params=PROXIES)
def proxy(
    request: pytest.FixtureRequest,
    test_ca: TestCA,
    facade: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    """Caddy or Nginx in front of the module's façade."""
    kind: str = request.param
    state = tmp_path_factory.mktemp(f"proxy-{kind}")
    overrides = {"VLLAMA_PROXY_MAX_BODY_BYTES": str(BODY_LIMIT)}
    with run_proxy(kind, test_ca, facade, state, overrides) as p:
        yield p


# --- configuration checks (no façade needed) ------------------------------------------------


@pytest.mark.parametrize("mode", ["internal", "acme", "files"])
def test_caddyfile_validates_in_every_tls_mode(mode: str, test_ca: TestCA, tmp_path: Path) -> None:
    env = proxy_env(test_ca, "127.0.0.1:11434", tmp_path, {"VLLAMA_PROXY_TLS_MODE": mode})
    if mode == "acme":
        env["VLLAMA_PROXY_HOSTNAME"] = "llm.example.com"
    result = run([*caddy_command()[:1], "validate", "--config", str(CADDYFILE)], env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Valid configuration" in result.stdout + result.stderr


def test_caddyfile_is_formatted() -> None:
    result = run([caddy_command()[0], "fmt", str(CADDYFILE)])
    assert result.returncode == 0, result.stderr
    assert result.stdout == CADDYFILE.read_text(), "run `caddy fmt --overwrite` on the Caddyfile"


def test_nginx_config_passes_nginx_t(test_ca: TestCA, tmp_path: Path) -> None:
    env = proxy_env(test_ca, "127.0.0.1:11434", tmp_path)
    conf = render_nginx(env, tmp_path)
    rendered = (tmp_path / "conf.d" / "vllama.conf").read_text()
    assert "${VLLAMA_PROXY_" not in rendered, "a template variable has no default"
    assert "$request_id" in rendered, "render-templates.sh must leave Nginx's variables alone"
    result = run([*nginx_command(conf, tmp_path), "-t"])
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_render_script_passes_shellcheck() -> None:
    script = NGINX_DIR / "render-templates.sh"
    result = run([require("shellcheck"), str(script)])
    assert result.returncode == 0, result.stdout


# --- streaming ------------------------------------------------------------------------------


def _first_line_share(
    client: httpx.Client, path: str, body: Mapping[str, object]
) -> tuple[float, int]:
    """(time of the first line / time of the last line, lines) for one streamed request."""
    start = time.monotonic()
    first: float | None = None
    last = start
    lines = 0
    with client.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if not line.strip() or line.strip() == "data: [DONE]":
                continue
            lines += 1
            last = time.monotonic()
            first = last if first is None else first
    assert first is not None, f"{path}: no lines"
    return (first - start) / (last - start), lines


def _assert_streams(client: httpx.Client, path: str, body: Mapping[str, object]) -> None:
    # A buffering proxy delivers the first line with (or near) the last on every try. On a
    # starved CPU the engine's API server itself sometimes sends a whole stream at once
    # (seen without any proxy, several tries in a row on 2 cores), so the best of ten
    # tries, a moment apart, counts. A buffering proxy fails every one of them.
    shares: list[float] = []
    for _ in range(10):
        share, lines = _first_line_share(client, path, body)
        assert lines >= 20, f"only {lines} lines: the stream is too short to measure"
        shares.append(share)
        if share < 0.2:
            return
        time.sleep(0.3)
    pytest.fail(f"{path}: first line arrived at {[f'{s:.0%}' for s in shares]} of the stream")


@pytest.mark.engine
def test_ollama_ndjson_stream_is_not_buffered(proxy: Proxy, test_ca: TestCA) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "a b c d e f g"}],
        "options": {"num_predict": LONG, "temperature": 0},
    }
    with proxy.client(test_ca, timeout=120) as client:
        _assert_streams(client, "/api/chat", body)


@pytest.mark.engine
def test_openai_sse_stream_is_not_buffered(proxy: Proxy, test_ca: TestCA) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "a b c d e f g"}],
        "max_tokens": LONG,
        "temperature": 0,
        "stream": True,
    }
    with proxy.client(test_ca, timeout=120) as client:
        _assert_streams(client, "/v1/chat/completions", body)


# --- the edge's rules -----------------------------------------------------------------------


@pytest.mark.engine
def test_http_redirects_to_https(proxy: Proxy) -> None:
    resp = httpx.get(f"{proxy.http_url}/api/tags?x=1", timeout=10)
    assert resp.status_code in (301, 308), resp.text
    https_port = proxy.https_url.rsplit(":", 1)[1]
    assert resp.headers["location"] == f"https://localhost:{https_port}/api/tags?x=1"


@pytest.mark.engine
def test_tls_is_modern_only(proxy: Proxy, test_ca: TestCA) -> None:
    host, port = "localhost", int(proxy.https_url.rsplit(":", 1)[1])
    legacy = test_ca.context()
    legacy.maximum_version = ssl.TLSVersion.TLSv1_2
    legacy.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")  # CBC, no AEAD
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"https://{host}:{port}/health", verify=legacy, timeout=10)
    with httpx.Client(verify=test_ca.context(), timeout=10) as client:
        assert client.get(f"https://{host}:{port}/health").status_code == 200


@pytest.mark.engine
def test_only_public_routes_are_reachable(proxy: Proxy, test_ca: TestCA) -> None:
    with proxy.client(test_ca, timeout=30) as client:
        for path in ("/", "/health", "/health/ready", "/api/version", "/api/tags", "/v1/models"):
            assert client.get(path).status_code == 200, path
        # vLLM's own routes and anything else: 404, whether the proxy or the façade says so.
        for path in ("/tokenize", "/detokenize", "/pooling", "/docs", "/openapi.json", "/x"):
            resp = client.get(path)
            assert resp.status_code == 404, path
            assert resp.headers["content-type"].startswith("application/json"), path
        resp = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/"})
        assert resp.status_code == 404


@pytest.mark.engine
def test_security_headers_on_answers_and_refusals(proxy: Proxy, test_ca: TestCA) -> None:
    with proxy.client(test_ca, timeout=30) as client:
        for resp in (client.get("/api/tags"), client.get("/no-such-path")):
            for name, value in SECURITY_HEADERS.items():
                assert value in resp.headers.get(name, ""), (resp.url, name, resp.headers)
            assert resp.headers.get("server") in (None, "nginx")  # no name or version


@pytest.mark.engine
def test_oversize_body_gets_413_in_json(proxy: Proxy, test_ca: TestCA) -> None:
    def chunked() -> Iterator[bytes]:  # no Content-Length: caught while it streams
        for _ in range(2 * BODY_LIMIT // 65536):
            yield b"x" * 65536

    headers = {"content-type": "application/json"}
    with proxy.client(test_ca, timeout=60) as client:
        for content in (b"x" * (2 * BODY_LIMIT), chunked()):
            resp = client.post("/api/chat", content=content, headers=headers)
            assert resp.status_code == 413
            assert "too large" in resp.json()["error"]


@pytest.mark.engine
def test_metrics_only_for_the_monitoring_network(proxy: Proxy, test_ca: TestCA) -> None:
    with proxy.client(test_ca, timeout=30) as client:
        resp = client.get("/metrics")
        assert resp.status_code == 200
        assert "vllama_requests_total" in resp.text
    with proxy.client(test_ca, source=OTHER_CLIENT, timeout=30) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/api/version").status_code == 200  # the address itself is fine
    # The proxy's own metrics listener, same rule.
    own = httpx.get(proxy.metrics_url, timeout=10)
    assert own.status_code == 200
    assert (
        ("caddy_http_" in own.text) if proxy.kind == "caddy" else ("Active connections" in own.text)
    )
    with httpx.Client(transport=httpx.HTTPTransport(local_address=OTHER_CLIENT)) as other:
        assert other.get(proxy.metrics_url, timeout=10).status_code == 404


def _access_log_entries(proxy: Proxy) -> list[dict[str, Any]]:
    lines = proxy.access_log.read_text().splitlines() if proxy.access_log.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def _logged_request_id(entry: dict[str, Any]) -> str | None:
    if "request_id" in entry:  # nginx: the log_format's own field
        return str(entry["request_id"])
    # caddy: the id it sent back (the client's, or the one it generated for the façade)
    ids = entry.get("resp_headers", {}).get("X-Request-Id")
    return str(ids[0]) if ids else None


@pytest.mark.engine
def test_access_log_is_json_with_the_request_id(proxy: Proxy, test_ca: TestCA) -> None:
    given = f"proxy-test-{uuid.uuid4()}"
    with proxy.client(test_ca, timeout=30) as client:
        resp = client.get("/api/version", headers={"X-Request-ID": given})
        assert resp.status_code == 200
        assert resp.headers["x-request-id"] == given
        generated = client.get("/api/version").headers["x-request-id"]
    assert generated and generated != given
    wanted = {given, generated}

    def logged() -> set[object]:
        return {_logged_request_id(e) for e in _access_log_entries(proxy)}

    wait_for(lambda: wanted <= logged(), f"request ids {wanted} in {proxy.access_log}", 10)


# --- limits with their own façade and proxy -------------------------------------------------


@pytest.mark.engine
@pytest.mark.parametrize("kind", PROXIES)
def test_burst_gets_429_with_retry_after_then_passes(
    kind: str, test_ca: TestCA, own_engine: Engine, tmp_path: Path
) -> None:
    from tests.facade import run_facade

    # Nginx limits natively; Caddy relies on the façade's own limiter behind it.
    facade_limits = {"rate_limit_per_minute": 120, "rate_limit_burst": 2} if kind == "caddy" else {}
    overrides = {"VLLAMA_PROXY_RATE_LIMIT": "2r/s", "VLLAMA_PROXY_RATE_BURST": "2"}
    body = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
    with (
        run_facade(engines=[{"url": own_engine.url}], log_format="text", **facade_limits) as url,
        run_proxy(kind, test_ca, url, tmp_path, overrides) as proxy,
        proxy.client(test_ca, timeout=60) as client,
        concurrent.futures.ThreadPoolExecutor(8) as pool,
    ):
        burst = list(pool.map(lambda _: client.post("/api/generate", json=body), range(8)))
        statuses = sorted(r.status_code for r in burst)
        assert 200 in statuses and 429 in statuses, statuses
        refused = next(r for r in burst if r.status_code == 429)
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert "rate limit" in refused.text
        # Honouring Retry-After is enough to be let in again.
        time.sleep(retry_after)
        assert client.post("/api/generate", json=body).status_code == 200


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.parametrize("kind", PROXIES)
def test_client_hangup_cancels_the_generation(
    kind: str, test_ca: TestCA, own_engine: Engine, tmp_path: Path
) -> None:
    from tests.facade import run_facade

    body = {
        "model": MODEL,
        "prompt": "a b c d e f g",
        "options": {"num_predict": HANGUP_LONG, "temperature": 0},
    }
    # At temperature 0 the demo model never stops early (done_reason "length"), so an engine
    # left running produces all HANGUP_LONG tokens. A hang-up through the proxy stops it
    # sooner; the best of three tries counts (a proxy that does not pass the hang-up on fails
    # every one). Each try has a façade and a proxy of its own: behind Nginx the façade
    # sometimes hears of the hang-up seconds late (uvicorn's http.disconnect 16-25 s after
    # Nginx logged the upstream connection closed, in about 1 run of 3 here; open, see
    # docs/security.md), and the tries of one pair then failed alike (CI run 13).
    generated = []
    for attempt in range(3):
        with (
            run_facade(engines=[{"url": own_engine.url}], log_format="text") as url,
            run_proxy(kind, test_ca, url, tmp_path / f"try-{attempt}") as proxy,
            proxy.client(test_ca, timeout=60) as client,
        ):
            generated.append(_generated_after_hangup(client, own_engine, body))
        if generated[-1] < HANGUP_LONG:
            return
    pytest.fail(f"the engine generated {generated} of {HANGUP_LONG} tokens after each hang-up")


def _generated_after_hangup(
    client: httpx.Client, engine: Engine, body: Mapping[str, object]
) -> int:
    """Tokens the engine generated for one stream the client dropped after its first line."""
    tokens_before = engine_counts(engine)[1]
    with client.stream("POST", "/api/generate", json=body) as resp:
        assert resp.status_code == 200
        next(resp.iter_lines())

    def idle() -> tuple[int, int] | None:
        counts = engine_counts(engine)
        return counts if counts[0] == 0 else None  # vllm:num_requests_running back to 0

    # Long enough for an engine left running to finish, so the count says what it did.
    counts = wait_for(idle, "the engine's running requests back to 0 after the hang-up", 120)
    generated = counts[1] - tokens_before
    assert generated > 0, "the engine generated nothing: was the request sent?"
    return generated
