"""GET /metrics: the app's own registry (and the GPUs NVML sees) in Prometheus text format."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from vllama.observability.metrics import CONTENT_TYPE, Metrics


async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    # Off the event loop: rendering reads NVML (blocking) and, with workers, metric files.
    return Response(await asyncio.to_thread(registry.render), media_type=CONTENT_TYPE)
