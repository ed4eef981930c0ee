"""Liveness (`GET /health`: the process answers) and readiness (`GET /health/ready`:
every known model has a healthy engine whose breaker is not open; 503 otherwise).

Both are open without a key (load balancers probe them). With keys configured,
/health/ready says only ready or not to a request without a valid key; engine URLs,
model ids, GPUs and counts are for key holders (and for everyone while keys are off)."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vllama import __version__
from vllama.observability.gpu import gpu_report
from vllama.server.deps import get_pool, get_started_at
from vllama.upstream.breaker import BreakerState


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__})


async def ready(request: Request) -> Response:
    pool = get_pool(request)
    engines = []
    usable: set[str] = set()
    for engine in pool.engines():
        breaker = engine.breaker.state
        ok = engine.healthy and breaker is not BreakerState.OPEN
        if ok:
            usable.add(engine.url)
        engines.append(
            {
                "url": engine.url,
                "healthy": engine.healthy,
                "breaker": breaker.name.lower().replace("_", "-"),
                "outstanding": engine.outstanding,
                "models": [c.id for c in engine.cards or ()],
            }
        )
    models = {m.id: bool(usable.intersection(m.engine_urls)) for m in pool.all_models()}
    # `app.state.draining` (set by whoever handles SIGTERM) takes the façade out of rotation
    # while in-flight streams finish.
    draining = bool(getattr(request.app.state, "draining", False))
    is_ready = bool(models) and all(models.values()) and not draining
    status = "ready" if is_ready else "draining" if draining else "not ready"
    code = 200 if is_ready else 503
    if not getattr(request.state, "authenticated", True):
        return JSONResponse({"status": status}, status_code=code)
    gpus, no_gpu = await asyncio.to_thread(gpu_report)  # NVML calls block
    body = {
        "status": status,
        "engines": engines,
        "models": [{"id": k, "ready": v} for k, v in models.items()],
        "gpus": gpus,
        "gpu_note": no_gpu,
        "version": __version__,
        "uptime_s": round(time.monotonic() - get_started_at(request), 3),
    }
    return JSONResponse(body, status_code=code)
