"""The pooled HTTP client to the engines (aiohttp: measured faster than httpx, see
tests/perf/bench_upstream_client.py) and reading the engines' error bodies."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from vllama.config import Settings

# Error bodies are read whole to find the message; a misbehaving engine cannot make us
# buffer more than this.
MAX_ERROR_BODY = 64 * 1024


def make_session(settings: Settings, *, fresh_connections: bool = False) -> aiohttp.ClientSession:
    """One session (one connection pool, keep-alive) for every engine; with
    `fresh_connections`, one that opens a new connection per request (retries after the
    engine dropped a pooled one).

    No total timeout: a long generation is not an error. The read timeout is the longest
    silence allowed (read_timeout_s); the connect timeout makes a dead engine fail fast.
    """
    connector = aiohttp.TCPConnector(
        limit=settings.max_in_flight + 64,  # the façade's own limit binds first
        limit_per_host=0,
        # Below the engines' own idle timeout (vLLM's VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s), so
        # the façade drops an idle connection before the engine can close it under a reuse.
        # (The race remains under load; the pool retries what it hits.)
        keepalive_timeout=None if fresh_connections else settings.upstream_keep_alive_s,
        force_close=fresh_connections,
        enable_cleanup_closed=True,
    )
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=None,
        sock_connect=settings.connect_timeout_s,
        sock_read=settings.read_timeout_s,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
        json_serialize=json.dumps,
    )


def error_message(status: int, raw: bytes) -> str:
    """The message of an engine's error body: OpenAI's `{"error": {"message"}}`, old
    vLLM's flat `{"object": "error", "message"}`, FastAPI's `{"detail"}`, or the text."""
    try:
        body: Any = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace").strip()
        return text[:500] or f"engine answered HTTP {status}"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(body.get("message"), str):
            return str(body["message"])
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            d = detail[0]
            loc = ".".join(str(p) for p in d.get("loc", ()) if p != "body")
            return f"{loc}: {d.get('msg', 'invalid')}" if loc else str(d.get("msg", "invalid"))
    return f"engine answered HTTP {status}"
