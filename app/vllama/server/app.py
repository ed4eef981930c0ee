"""create_app(settings): the façade as one FastAPI app.

The pool starts and stops with the app's lifespan. FastAPI's docs routes (/docs, /redoc,
its /openapi.json) are off: the public surface is exactly the Ollama and OpenAI APIs plus
health and metrics; with `openapi = true`, /openapi.json serves vllama's own document
(server/openapi.py, docs/openapi.json). The hot path has no BaseHTTPMiddleware: the
middleware is raw ASGI, RequestContextMiddleware outside everything (VllamaApp), then
FastRoutes, which calls the inference handlers without FastAPI's routing, dependency and
middleware machinery.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from vllama import __version__
from vllama.config import Settings
from vllama.models.info import read_model_config
from vllama.observability.metrics import Metrics
from vllama.security.keys import KeyStore
from vllama.security.shared import SharedLimits
from vllama.server.errors import install_error_handlers
from vllama.server.fast_routes import FastRoutes
from vllama.server.middleware import RequestContextMiddleware
from vllama.server.route_table import api_router
from vllama.upstream.loader import EngineLoader
from vllama.upstream.pool import EnginePool


def create_app(
    settings: Settings,
    *,
    loader: EngineLoader | None = None,
    shared_limits: SharedLimits | None = None,
    metrics_dir: str | None = None,
) -> FastAPI:
    """The façade. `loader` (vllama serve's lifecycle.scheduler.EngineScheduler) starts
    engines for pulled models on demand and stops them after keep_alive. In a worker
    process (server/workers.py): `shared_limits` holds key concurrency and client rates
    across workers, `metrics_dir` is prometheus-client's multiprocess folder."""
    metrics = Metrics(multiprocess_dir=metrics_dir)
    pool = EnginePool(
        settings, metrics, model_config=lambda root: read_model_config(root, settings.cache_dir)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        if loader is not None:
            await loader.start(pool, metrics)
        try:
            yield
        finally:
            if loader is not None:
                await loader.close()
            await pool.close()

    app = VllamaApp(
        title="vllama",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.pool = pool
    app.state.metrics = metrics
    app.state.started_at = time.monotonic()
    app.state.keys = KeyStore.from_settings(settings)

    install_error_handlers(app)
    app.include_router(api_router())
    app.front = RequestContextMiddleware(
        FastRoutes(app.routed),
        settings=settings,
        metrics=metrics,
        keys=app.state.keys,
        shared_limits=shared_limits,
    )
    return app


class VllamaApp(FastAPI):
    """FastAPI with the request context in front of it: every HTTP request passes
    RequestContextMiddleware, then FastRoutes, and only then (all but the inference
    routes) FastAPI and Starlette's own middleware. A streamed answer's every chunk then
    crosses one wrapper of `send`, not three: Starlette's error middleware wraps each
    message it passes (docs/performance-analysis.md)."""

    front: Any = None  # set by create_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.front is not None:
            scope["app"] = self  # as Starlette sets it: routes read request.app.state
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def routed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own handling: routing, dependencies, exception handlers."""
        await super().__call__(scope, receive, send)
