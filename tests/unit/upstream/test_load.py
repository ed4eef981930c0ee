"""upstream/load.py reads an engine's load from vLLM's own /metrics: a recorded real
exposition of vLLM 0.32 (CPU build) under load, data-parallel series, and text that says
nothing about load."""

from __future__ import annotations

import math
from pathlib import Path

from vllama.upstream.load import PEAK_DECAY_S, LoadSample, parse_load, smoothed

RECORDED = Path(__file__).parent / "data" / "vllm-0.32-metrics-under-load.txt"


def test_recorded_vllm_metrics_under_load() -> None:
    sample = parse_load(RECORDED.read_text())
    assert sample is not None
    assert sample.running == 43.0 and sample.waiting == 0.0
    assert 0.007 < sample.kv_usage < 0.008
    # vllm:num_requests_waiting_by_reason is another series, not counted as waiting.
    assert "vllm:num_requests_waiting_by_reason" in RECORDED.read_text()


def test_data_parallel_engines_add_up_and_the_fullest_cache_counts() -> None:
    text = "\n".join(
        [
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0',
            'vllm:num_requests_running{engine="1",model_name="m"} 4.0',
            'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0',
            'vllm:num_requests_waiting{engine="1",model_name="m"} 2.0',
            'vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 9.0',
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25',
            'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75',
            'vllm:num_requests_running{engine="2",model_name="m"} NaN',
        ]
    )
    sample = parse_load(text)
    assert sample is not None
    assert (sample.running, sample.waiting, sample.kv_usage) == (7.0, 3.0, 0.75)


def test_no_load_series_is_none() -> None:
    assert parse_load("# nothing\nprocess_cpu_seconds_total 1.0\n") is None
    assert parse_load("") is None


def test_a_dip_between_polls_keeps_the_decayed_peak() -> None:
    busy, idle = LoadSample(10, 2, 0.5), LoadSample(0, 0, 0.0)
    assert smoothed(busy, None, 0) == busy  # the first poll counts as read
    half = smoothed(idle, busy, 0.5 * PEAK_DECAY_S)  # one poll read 0 from a busy engine
    assert math.isclose(half.running, 10 * math.exp(-0.5)) and half.running > 6
    assert math.isclose(half.waiting, 2 * math.exp(-0.5))
    assert smoothed(idle, busy, 10 * PEAK_DECAY_S).running < 0.001  # idle for long: idle
    assert smoothed(busy, idle, 0.1) == busy  # a rise counts at once
