"""The metrics contract (docs/development.md "Metrics"): names, types, labels, counting,
and an exposition that the real `promtool check metrics` accepts."""

from __future__ import annotations

import itertools
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vllama import __version__
from vllama.observability.metrics import Metrics

# name (as the parser reports it) -> (type, label names)
CONTRACT: dict[str, tuple[str, set[str]]] = {
    "vllama_requests": ("counter", {"api", "route", "model", "status", "key"}),
    "vllama_request_duration_seconds": ("histogram", {"api", "route", "model"}),
    "vllama_time_to_first_token_seconds": ("histogram", {"api", "route", "model"}),
    "vllama_inter_chunk_seconds": ("histogram", {"api", "route", "model"}),
    "vllama_overhead_seconds": ("histogram", {"api", "route"}),
    "vllama_prompt_tokens": ("counter", {"model"}),
    "vllama_completion_tokens": ("counter", {"model"}),
    "vllama_requests_in_flight": ("gauge", {"api", "route"}),
    "vllama_requests_queued": ("gauge", set()),
    "vllama_queue_rejections": ("counter", set()),
    "vllama_upstream_errors": ("counter", {"engine", "kind"}),
    "vllama_upstream_retries": ("counter", {"engine", "reason"}),
    "vllama_engine_up": ("gauge", {"engine"}),
    "vllama_engine_breaker_state": ("gauge", {"engine"}),
    "vllama_engine_restarts": ("counter", {"engine"}),
    "vllama_model_loads": ("counter", {"model", "how"}),
    "vllama_model_load_duration_seconds": ("histogram", {"model"}),
    "vllama_model_unloads": ("counter", {"model", "reason"}),
    "vllama_models_loaded": ("gauge", set()),
    "vllama_auth_failures": ("counter", {"api"}),
    "vllama_build_info": ("gauge", {"version"}),
    "vllama_gpus": ("gauge", set()),  # here no GPU: the per-GPU gauges are in test_gpu.py
}

ENGINE = "http://127.0.0.1:18001"


def exercised() -> Metrics:
    m = Metrics()
    m.observe_request("ollama", "/api/chat", "vllama-demo", 200, "alice", 0.42)
    m.observe_request("ollama", "/api/chat", "vllama-demo", 200, "alice", 1.5)
    m.observe_request("openai", "/v1/embeddings", "all-minilm", 401, "anonymous", 0.001)
    timer = m.stream_timer("ollama", "/api/chat", "vllama-demo", start=10.0)
    for received in (10.2, 10.204, 10.2045):  # TTFT 0.2 s, then gaps of 4 ms and 0.5 ms
        timer.chunk(received)
    timer.close()  # gaps reach the histogram at least once a second and at the end
    m.observe_overhead("ollama", "/api/chat", 0.0003)
    m.add_tokens("vllama-demo", 11, 7)
    m.add_tokens("vllama-demo", 5, 0)
    with m.track_in_flight("openai", "/v1/chat/completions"):
        pass
    m.set_queued(3)
    m.queue_rejected()
    m.upstream_error(ENGINE, "connect")
    m.upstream_retry(ENGINE, "dropped_connection")
    m.set_engine_up(ENGINE, True)
    m.set_breaker_state(ENGINE, 2)
    m.engine_restarted(ENGINE)
    m.model_loaded("vllama-test/vllama-demo", "start", 61.5)
    m.model_unloaded("vllama-test/vllama-demo", "keep_alive")
    m.set_models_loaded(1)
    m.auth_failure("openai")
    return m


def value(m: Metrics, sample: str, **labels: str) -> float:
    got = m.registry.get_sample_value(sample, labels)
    assert got is not None, f"no sample {sample}{labels}"
    return got


def test_every_contract_metric_has_its_type_and_labels() -> None:
    families = {f.name: f for f in text_string_to_metric_families(exercised().render().decode())}
    for name, (kind, labels) in CONTRACT.items():
        family = families.get(name)
        assert family is not None, f"{name} missing"
        assert family.type == kind, name
        sample_labels = {k for s in family.samples for k in s.labels if k != "le"}
        assert sample_labels == labels, name
    assert set(families) == set(CONTRACT), "metrics outside the contract"


def test_counts_are_exact() -> None:
    m = exercised()
    chat = {"api": "ollama", "route": "/api/chat", "model": "vllama-demo"}
    assert value(m, "vllama_requests_total", **chat, status="200", key="alice") == 2
    assert value(m, "vllama_request_duration_seconds_count", **chat) == 2
    assert value(m, "vllama_request_duration_seconds_sum", **chat) == pytest.approx(1.92)
    assert value(m, "vllama_request_duration_seconds_bucket", **chat, le="0.5") == 1
    assert value(m, "vllama_prompt_tokens_total", model="vllama-demo") == 16
    assert value(m, "vllama_completion_tokens_total", model="vllama-demo") == 7
    assert value(m, "vllama_requests_queued") == 3
    assert value(m, "vllama_queue_rejections_total") == 1
    assert value(m, "vllama_engine_breaker_state", engine=ENGINE) == 2
    assert value(m, "vllama_auth_failures_total", api="openai") == 1
    assert value(m, "vllama_build_info", version=__version__) == 1


def test_stream_timer_gives_one_ttft_and_a_gap_per_later_chunk() -> None:
    m = exercised()
    chat = {"api": "ollama", "route": "/api/chat", "model": "vllama-demo"}
    assert value(m, "vllama_time_to_first_token_seconds_count", **chat) == 1
    assert value(m, "vllama_time_to_first_token_seconds_sum", **chat) == pytest.approx(0.2)
    assert value(m, "vllama_inter_chunk_seconds_count", **chat) == 2
    assert value(m, "vllama_inter_chunk_seconds_sum", **chat) == pytest.approx(0.0045)
    assert value(m, "vllama_inter_chunk_seconds_bucket", **chat, le="0.001") == 1


def test_in_flight_goes_back_down_even_when_the_request_fails() -> None:
    m = Metrics()
    labels = {"api": "openai", "route": "/v1/completions"}
    with pytest.raises(RuntimeError), m.track_in_flight("openai", "/v1/completions"):
        assert value(m, "vllama_requests_in_flight", **labels) == 1
        raise RuntimeError("boom")
    assert value(m, "vllama_requests_in_flight", **labels) == 0


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.auth_failure("ollama")
    assert b.registry.get_sample_value("vllama_auth_failures_total", {"api": "ollama"}) is None


def test_latency_buckets_span_milliseconds_to_minutes() -> None:
    m = exercised()
    text = m.render().decode()
    assert 'vllama_inter_chunk_seconds_bucket{api="ollama",le="0.001"' in text.replace(
        'model="vllama-demo",route="/api/chat",', ""
    )
    ttft_les = {
        float(s.labels["le"])
        for f in text_string_to_metric_families(text)
        if f.name == "vllama_time_to_first_token_seconds"
        for s in f.samples
        if "le" in s.labels and s.labels["le"] != "+Inf"
    }
    assert min(ttft_les) <= 0.01 and max(ttft_les) >= 120


def test_promtool_accepts_the_exposition() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run scripts/install-system-deps.sh (Debian `prometheus`)")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exercised().render(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""


def test_stream_gaps_counted_per_answer_equal_one_observation_per_gap() -> None:
    # StreamTimer adds its counts to the histogram's buckets in bulk; the exposition must
    # read as if every gap had been observed (bucket edges included).
    counted, observed = Metrics(), Metrics()
    gaps = [0.25, 0.5, 0.0005, 0.001, 0.0010001, 0.0025, 0.02, 0.035, 0.2, 4.9, 5.0, 7.5, 0.0]
    times = [1.0]
    for gap in gaps:
        times.append(times[-1] + gap)
    timer = counted.stream_timer("openai", "/v1/chat/completions", "m", start=0.0)
    for t in times:
        timer.chunk(t)
    timer.close()
    reference = observed.stream_timer("openai", "/v1/chat/completions", "m", start=0.0)
    reference.chunk(1.0)
    child = observed.inter_chunk.labels("openai", "/v1/chat/completions", "m")
    for before, after in itertools.pairwise(times):
        child.observe(after - before)

    def samples(m: Metrics) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, round(s.value, 9))
            for family in m.registry.collect()
            if family.name == "vllama_inter_chunk_seconds"
            for s in family.samples
        ]

    assert samples(counted) == samples(observed)


def test_stream_gaps_reach_the_histogram_within_a_second_before_the_end() -> None:
    m = Metrics()
    labels = {"api": "ollama", "route": "/api/chat", "model": "m"}
    timer = m.stream_timer("ollama", "/api/chat", "m", start=0.0)
    for t in (0.5, 0.6, 0.7):
        timer.chunk(t)
    assert value(m, "vllama_inter_chunk_seconds_count", **labels) == 0  # counted, not added
    timer.chunk(1.2)  # a second after the start: added
    assert value(m, "vllama_inter_chunk_seconds_count", **labels) == 3
    timer.chunk(1.3)
    timer.close()
    timer.close()  # idempotent
    assert value(m, "vllama_inter_chunk_seconds_count", **labels) == 4
