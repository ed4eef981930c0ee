"""What routes take from `app.state` (set up by server.app.create_app), typed."""

from __future__ import annotations

from typing import Protocol, cast

from starlette.requests import Request

from vllama.config import Settings
from vllama.observability.metrics import StreamTimer
from vllama.upstream.pool import EnginePool


class RouteMetrics(Protocol):
    """The part of observability.metrics.Metrics that routes call."""

    def stream_timer(self, api: str, route: str, model: str, start: float) -> StreamTimer: ...
    def observe_overhead(self, api: str, route: str, seconds: float) -> None: ...
    def add_tokens(self, model: str, prompt: int, completion: int) -> None: ...


def get_pool(request: Request) -> EnginePool:
    return cast(EnginePool, request.app.state.pool)


def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


def get_metrics(request: Request) -> RouteMetrics | None:
    return cast("RouteMetrics | None", getattr(request.app.state, "metrics", None))


def get_started_at(request: Request) -> float:
    return cast(float, request.app.state.started_at)
