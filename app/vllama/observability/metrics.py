"""Prometheus metrics of the façade. Names and labels are a contract with `monitoring/`
(docs/development.md "Metrics"); every app gets its own registry so tests and several
apps in one process never share counters.

With several worker processes (`workers` > 1) prometheus-client runs in its multiprocess
mode: the parent sets PROMETHEUS_MULTIPROC_DIR before the workers start, every process
writes its values to files there, and `render` merges them (MultiProcessCollector), so
/metrics from any worker shows the host's totals. Counters and histograms add up; each
gauge says how its per-worker values combine (`multiprocess_mode`): requests in flight and
queued add up over live workers; engine up is the latest health check any worker made;
a breaker shows its worst state among workers.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from vllama import __version__
from vllama.observability.gpu_metrics import GpuCollector

__all__ = ["CONTENT_TYPE", "Metrics", "StreamTimer"]

# The classic text format every Prometheus version parses (what `generate_latest` writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Whole requests: from a ~1 ms /api/tags to multi-minute generations.
_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0
)  # fmt: skip
# Time to first token: prefill of long prompts under load can take minutes.
_TTFT_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0
)  # fmt: skip
# Gaps between streamed chunks: decode steps are milliseconds, stalls are seconds.
_INTER_CHUNK_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0
)  # fmt: skip
# Loading a model: a wake from sleep takes under a second, a cold start minutes.
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
# The façade's own work per request: should stay well under a millisecond.
_OVERHEAD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25
)  # fmt: skip


class Metrics:
    """Every façade metric, registered in one registry (`self.registry`)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        multiprocess_dir: str | None = None,
        gpus: Collector | None = None,
    ) -> None:
        # `*_created` samples would double every series for a timestamp nobody graphs.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.multiprocess_dir = multiprocess_dir  # None: this process's values only
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        # Read at scrape time, never merged across workers: each reads the same NVML.
        self.gpus = gpus if gpus is not None else GpuCollector()
        r = self.registry
        if multiprocess_dir is None:
            r.register(self.gpus)
        self.requests = Counter(
            "vllama_requests_total",
            "Requests answered, by API, route template, model, HTTP status and key name.",
            ("api", "route", "model", "status", "key"),
            registry=r,
        )
        self.request_duration = Histogram(
            "vllama_request_duration_seconds",
            "Time from the request's arrival to the end of its response (streams included).",
            ("api", "route", "model"),
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "vllama_time_to_first_token_seconds",
            "Time from the request's arrival to the first generated token sent to the client.",
            ("api", "route", "model"),
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.inter_chunk = Histogram(
            "vllama_inter_chunk_seconds",
            "Gaps between consecutive streamed chunks sent to the client.",
            ("api", "route", "model"),
            buckets=_INTER_CHUNK_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "vllama_overhead_seconds",
            "The façade's own time per request, upstream waits excluded.",
            ("api", "route"),
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "vllama_prompt_tokens",
            "Prompt tokens processed, as the engine reported them.",
            ("model",),
            registry=r,
        )
        self.completion_tokens = Counter(
            "vllama_completion_tokens",
            "Completion tokens generated, as the engine reported them.",
            ("model",),
            registry=r,
        )
        self.in_flight = Gauge(
            "vllama_requests_in_flight",
            "Requests being answered right now.",
            ("api", "route"),
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queued = Gauge(
            "vllama_requests_queued",
            "Inference requests waiting for a free slot (max_in_flight reached).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queue_rejections = Counter(
            "vllama_queue_rejections",
            "Requests refused with 503 because the wait queue was full (max_queue).",
            registry=r,
        )
        self.upstream_errors = Counter(
            "vllama_upstream_errors",
            "Failed calls to engines, by engine base URL and kind of failure.",
            ("engine", "kind"),
            registry=r,
        )
        self.upstream_retries = Counter(
            "vllama_upstream_retries",
            "Requests sent again because an engine never answered them: a pooled connection "
            "it dropped (reason dropped_connection), or no connection at all (connect, timeout).",
            ("engine", "reason"),
            registry=r,
        )
        self.engine_up = Gauge(
            "vllama_engine_up",
            "1 when the engine's last health check passed, else 0.",
            ("engine",),
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.breaker_state = Gauge(
            "vllama_engine_breaker_state",
            "Circuit breaker per engine: 0 closed, 1 half-open, 2 open.",
            ("engine",),
            multiprocess_mode="livemax",
            registry=r,
        )
        self.engine_restarts = Counter(
            "vllama_engine_restarts",
            "Restarts of supervised engine processes.",
            ("engine",),
            registry=r,
        )
        self.model_loads = Counter(
            "vllama_model_loads",
            "Engines started (or woken from sleep) for a model on demand.",
            ("model", "how"),
            registry=r,
        )
        self.model_load_duration = Histogram(
            "vllama_model_load_duration_seconds",
            "Time from the first request for a model to its engine answering /health.",
            ("model",),
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.model_unloads = Counter(
            "vllama_model_unloads",
            "On-demand engines stopped or put to sleep, by reason (keep_alive, evicted, requested).",
            ("model", "reason"),
            registry=r,
        )
        self.models_loaded = Gauge(
            "vllama_models_loaded",
            "On-demand engines loaded now (sleeping ones not counted).",
            registry=r,
        )
        self.auth_failures = Counter(
            "vllama_auth_failures",
            "Requests refused with 401 (missing or unknown API key).",
            ("api",),
            registry=r,
        )
        self.build_info = Gauge(
            "vllama_build_info",
            "Always 1; the `version` label is the running vllama version.",
            ("version",),
            multiprocess_mode="livemax",
            registry=r,
        )
        self.build_info.labels(version=__version__).set(1)
        self.queued.set(0)
        # Labelled children of the per-request metrics, by label values: prometheus_client's
        # own labels() validates and locks on every call (a few µs, several per request).
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # --- per request ------------------------------------------------------------------

    def observe_request(
        self, api: str, route: str, model: str, status: int, key: str, duration_s: float
    ) -> None:
        self._child(self.requests, api, route, model, str(status), key).inc()
        self._child(self.request_duration, api, route, model).observe(duration_s)

    def stream_timer(self, api: str, route: str, model: str, start: float) -> StreamTimer:
        """Times one streamed answer that arrived at `start` (perf_counter seconds)."""
        return StreamTimer(
            self._child(self.ttft, api, route, model),
            self._child(self.inter_chunk, api, route, model),
            start,
        )

    def observe_overhead(self, api: str, route: str, seconds: float) -> None:
        self._child(self.overhead, api, route).observe(seconds)

    def add_tokens(self, model: str, prompt: int, completion: int) -> None:
        if prompt > 0:
            self._child(self.prompt_tokens, model).inc(prompt)
        if completion > 0:
            self._child(self.completion_tokens, model).inc(completion)

    def in_flight_gauge(self, api: str, route: str) -> Gauge:
        """The in-flight gauge of (api, route): inc() when a request starts, dec() at its end."""
        return cast(Gauge, self._child(self.in_flight, api, route))

    @contextmanager
    def track_in_flight(self, api: str, route: str) -> Iterator[None]:
        gauge = self.in_flight_gauge(api, route)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    # --- engines ------------------------------------------------------------------------

    def upstream_error(self, engine: str, kind: str) -> None:
        self.upstream_errors.labels(engine, kind).inc()

    def upstream_retry(self, engine: str, reason: str) -> None:
        self.upstream_retries.labels(engine, reason).inc()

    def set_engine_up(self, engine: str, up: bool) -> None:
        self.engine_up.labels(engine).set(1 if up else 0)

    def set_breaker_state(self, engine: str, state: int) -> None:
        self.breaker_state.labels(engine).set(state)

    def engine_restarted(self, engine: str) -> None:
        self.engine_restarts.labels(engine).inc()

    def model_loaded(self, model: str, how: str, seconds: float) -> None:
        self.model_loads.labels(model, how).inc()
        self.model_load_duration.labels(model).observe(seconds)

    def model_unloaded(self, model: str, reason: str) -> None:
        self.model_unloads.labels(model, reason).inc()

    def set_models_loaded(self, n: int) -> None:
        self.models_loaded.set(n)

    # --- keys and queue -------------------------------------------------------------------

    def auth_failure(self, api: str) -> None:
        self.auth_failures.labels(api).inc()

    def set_queued(self, n: int) -> None:
        self.queued.set(n)

    def queue_rejected(self) -> None:
        self.queue_rejections.inc()

    # --- exposition -----------------------------------------------------------------------

    def render(self) -> bytes:
        """The registry in Prometheus text format (`CONTENT_TYPE`); with several workers,
        every worker's values merged."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        merged.register(self.gpus)
        return generate_latest(merged)


class StreamTimer:
    """TTFT and the gaps between chunks of one streamed answer.

    The labelled histograms are looked up once per answer, not once per chunk: the label
    lookup cost as much as the observation itself (docs/performance-analysis.md). Gaps are
    counted into the histogram's buckets here and added to it at most once a second and at
    `close()`: an observation takes a lock per bucket, on every token otherwise.
    """

    __slots__ = ("_bounds", "_counts", "_flushed", "_gap", "_last", "_start", "_sum", "_ttft")

    def __init__(self, ttft: Histogram, gap: Histogram, start: float) -> None:
        self._ttft = ttft
        self._gap = gap
        self._start = start
        self._last: float | None = None
        # prometheus_client's histogram keeps its bounds and per-bucket values; without
        # them (another version) every gap is observed at once, as before.
        self._bounds: list[float] | None = list(gap._upper_bounds) if _bulk_ok(gap) else None
        self._counts = [0] * len(self._bounds) if self._bounds is not None else []
        self._sum = 0.0
        self._flushed = start

    def chunk(self, now: float) -> None:
        """A chunk was received at `now` (perf_counter seconds)."""
        last = self._last
        self._last = now
        if last is None:
            self._ttft.observe(now - self._start)
            return
        gap = now - last
        if self._bounds is None:
            self._gap.observe(gap)
            return
        self._counts[bisect_left(self._bounds, gap)] += 1
        self._sum += gap
        if now - self._flushed >= 1.0:
            self._flush(now)

    def close(self) -> None:
        """Add what is counted to the histogram (the answer ended)."""
        if self._bounds is not None:
            self._flush(self._last or self._start)

    def _flush(self, now: float) -> None:
        self._flushed = now
        if not self._sum and not any(self._counts):
            return
        buckets = self._gap._buckets
        for i, count in enumerate(self._counts):
            if count:
                buckets[i].inc(count)
                self._counts[i] = 0
        self._gap._sum.inc(self._sum)
        self._sum = 0.0


def _bulk_ok(histogram: Histogram) -> bool:
    """Whether this prometheus_client histogram has the internals StreamTimer adds to."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    return (
        isinstance(bounds, list)
        and isinstance(buckets, list)
        and len(bounds) == len(buckets)
        and hasattr(total, "inc")
        and all(hasattr(b, "inc") for b in buckets)
    )
