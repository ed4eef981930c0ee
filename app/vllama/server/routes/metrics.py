"""GET /metrics: the app's own registry in Prometheus text format."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from vllama.observability.metrics import CONTENT_TYPE, Metrics


async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)
