"""The load generator against a real local server (tests/perf/instant_upstream.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from tests import procs
from vllama.bench.load import LoadSpec, build_request, run_level


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with procs.running(procs.instant_upstream(chunks=5), "/health", timeout=30) as proc:
        yield proc.url


def test_requests_are_bounded_by_count_or_duration() -> None:
    with pytest.raises(ValueError, match="unbounded"):
        LoadSpec(url="http://127.0.0.1:1", model="m", requests=None, duration_s=None)


def test_each_request_has_a_unique_prompt_prefix() -> None:
    spec = LoadSpec(url="u", model="m", api="openai", prompt_tokens=4)
    bodies = {json.loads(build_request(spec, i)[1])["messages"][0]["content"] for i in range(3)}
    assert len(bodies) == 3
    path, body = build_request(LoadSpec(url="u", model="m", api="ollama", max_tokens=7), 0)
    assert path == "/api/chat" and json.loads(body)["options"]["num_predict"] == 7


@pytest.mark.timeout(60)
def test_streaming_counts_chunks_gaps_and_usage(upstream: str) -> None:
    spec = LoadSpec(url=upstream, model="vllama-demo", api="openai", concurrency=4, requests=40)
    s = asyncio.run(run_level(spec))
    assert (s["ok"], s["errors"]) == (40, 0)
    # 5 content chunks per stream; the final usage event says 5 completion tokens.
    assert s["output_tokens"] == 40 * 5
    assert s["ttft_ms"]["p50"] is not None and s["itl_ms"]["p50"] is not None
    assert 0 < s["client_cpu_share"] <= 1.5


@pytest.mark.timeout(60)
def test_errors_are_counted_not_raised(upstream: str) -> None:
    spec = LoadSpec(url=upstream + "/nowhere", model="m", api="openai", requests=5)
    s = asyncio.run(run_level(spec))
    assert (s["ok"], s["errors"], s["error_kinds"]) == (0, 5, {"http_404": 5})
    dead = LoadSpec(url="http://127.0.0.1:9", model="m", api="openai", requests=3)
    s = asyncio.run(run_level(dead))
    assert s["errors"] == 3 and s["ok"] == 0


@pytest.mark.timeout(60)
def test_open_loop_holds_the_arrival_rate(upstream: str) -> None:
    spec = LoadSpec(
        url=upstream,
        model="vllama-demo",
        api="openai",
        stream=False,
        concurrency=8,
        requests=30,
        rate=100.0,
    )
    s = asyncio.run(run_level(spec))
    assert s["ok"] == 30
    # 30 arrivals at 100/s take about 0.29 s; a closed loop would finish far sooner or later.
    assert 0.25 <= s["wall_s"] <= 2.0
