"""create_app(settings): the façade as one FastAPI app.

The pool starts and stops with the app's lifespan. FastAPI's docs routes (/docs, /redoc,
its /openapi.json) are off: the public surface is exactly the Ollama and OpenAI APIs plus
health and metrics; with `openapi = true`, /openapi.json serves vllama's own document
(server/openapi.py, docs/openapi.json). The hot path has no BaseHTTPMiddleware: the middleware is raw ASGI,
RequestContextMiddleware outside, then FastRoutes, which calls the inference handlers
without FastAPI's routing and dependency machinery.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from vllama import __version__
from vllama.config import Settings
from vllama.models.info import read_model_config
from vllama.observability.metrics import Metrics
from vllama.security.keys import KeyStore
from vllama.server.errors import install_error_handlers
from vllama.server.fast_routes import FastRoutes
from vllama.server.middleware import RequestContextMiddleware
from vllama.server.route_table import api_router
from vllama.upstream.loader import EngineLoader
from vllama.upstream.pool import EnginePool


def create_app(settings: Settings, *, loader: EngineLoader | None = None) -> FastAPI:
    """The app; `loader` (vllama serve's lifecycle.scheduler.EngineScheduler) starts
    engines for pulled models on demand and stops them after keep_alive."""
    metrics = Metrics()
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

    app = FastAPI(
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
    # add_middleware wraps from the inside out: FastRoutes runs inside the request context.
    app.add_middleware(FastRoutes)
    app.add_middleware(
        RequestContextMiddleware, settings=settings, metrics=metrics, keys=app.state.keys
    )
    return app
