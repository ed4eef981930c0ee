"""What routes take from `app.state` and `request.state` (set up by server.app.create_app
and the middleware), typed, in one place for both APIs."""

from __future__ import annotations

from typing import Any, Protocol, cast

from starlette.requests import Request

from vllama.config import Settings
from vllama.observability.metrics import StreamTimer
from vllama.server import jsonbody
from vllama.upstream.pool import EnginePool, ServedModel


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


async def acquire_model(
    request: Request, name: str, keep_alive: float | None = None
) -> ServedModel:
    """The served model for `name` (aliases included), its engine started first when it is
    a pulled model with none (on-demand); noted for the access log and metrics.
    `keep_alive`: the request's own (seconds), else the default applies."""
    model = await get_pool(request).acquire(name, keep_alive)
    request.state.model = model.id
    return model


def upstream_headers(request: Request) -> dict[str, str]:
    """Headers every engine request carries: the request id, so engine logs match ours."""
    request_id = getattr(request.state, "request_id", None)
    return {"X-Request-ID": request_id} if isinstance(request_id, str) else {}


def set_priority(request: Request, body: dict[str, Any]) -> None:
    """vLLM's priority scheduling: the API key's priority, when it has one. A client
    cannot pick its own (a `priority` it sent is dropped): scheduling is the operator's."""
    body.pop("priority", None)
    priority = getattr(getattr(request.state, "api_key", None), "priority", None)
    if isinstance(priority, int):
        body["priority"] = priority


# Bodies above this are translated and encoded in a worker thread, so that one large
# legal request does not hold the event loop (and every other request) for its duration.
LARGE_BODY = 1024 * 1024


def is_large(request: Request) -> bool:
    length = request.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) > LARGE_BODY


async def request_json(request: Request) -> Any:
    """The body as JSON: parsed once by the middleware (`request.state.json`), else here
    with the same safe parser. jsonbody.InvalidJson (a message for the client) if it is
    not acceptable JSON; None for an empty body."""
    parsed = getattr(request.state, "json", None)
    if parsed is not None:
        return parsed
    raw = await request.body()
    if not raw.strip():
        return None
    return jsonbody.loads(raw)


def raw_json_body(request: Request) -> bytes | None:
    """The bytes the middleware parsed `request.state.json` from (None if it did not)."""
    raw = getattr(request.state, "body", None)
    return raw if isinstance(raw, bytes) else None


def record_usage(request: Request, model: str, prompt: int, completion: int) -> None:
    """Token counts for the access log (`request.state.usage`) and the token counters."""
    request.state.usage = (prompt, completion)
    metrics = get_metrics(request)
    if metrics is not None:
        metrics.add_tokens(model, prompt, completion)
