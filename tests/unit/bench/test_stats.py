from __future__ import annotations

import pytest

from vllama.bench.stats import RequestResult, distribution, percentile, summarize


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0


def test_distribution_scales_to_milliseconds() -> None:
    d = distribution([0.001, 0.002, 0.003])
    assert d["p50"] == pytest.approx(2.0)
    assert d["max"] == pytest.approx(3.0)
    assert distribution([])["p50"] is None


def test_summarize_counts_only_successes_and_groups_errors() -> None:
    ok = RequestResult(start=0.0, end=1.0, first_token=0.25, output_tokens=10, gaps=[0.1, 0.3])
    bad = RequestResult(start=0.0, end=0.5, error="http_503")
    s = summarize([ok, bad, RequestResult(start=0.0, end=0.1, error="http_503")], wall_s=2.0)
    assert (s["ok"], s["errors"], s["error_kinds"]) == (1, 2, {"http_503": 2})
    assert s["requests_per_s"] == 0.5
    assert s["output_tokens_per_s"] == 5.0
    assert s["ttft_ms"]["p50"] == pytest.approx(250.0)
    assert s["max_stall_ms"] == pytest.approx(300.0)
