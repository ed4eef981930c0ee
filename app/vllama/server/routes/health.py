"""Liveness (`GET /health`: the process answers) and readiness (`GET /health/ready`:
every known model has a healthy engine whose breaker is not open; 503 otherwise).

Both are open without a key (load balancers probe them). With keys configured,
/health/ready says only ready or not to a request without a valid key; engine URLs,
model ids, GPUs and counts are for key holders (and for everyone while keys are off).

Readiness also turns 503 ("draining") while the drain file `<state_dir>/draining` exists:
a rolling upgrade touches it so that a gateway's health checks take the host out of
rotation before anything stops, then removes it once the host serves again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vllama import __version__
from vllama.observability.gpu import gpu_report
from vllama.server.deps import get_pool, get_settings, get_started_at
from vllama.upstream.breaker import BreakerState

# The file a rolling upgrade (or an operator) creates to drain this façade: `touch` it,
# wait for the gateway to notice, stop; remove it once the host is ready again.
DRAIN_FILE = "draining"


def drain_requested(state_dir: Path) -> bool:
    return (state_dir / DRAIN_FILE).exists()


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
    # `app.state.draining` (set by whoever handles SIGTERM) or the operator's drain file
    # takes the façade out of rotation while in-flight streams finish.
    draining = bool(getattr(request.app.state, "draining", False)) or drain_requested(
        get_settings(request).state_dir
    )
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
