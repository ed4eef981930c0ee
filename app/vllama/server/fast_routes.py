"""FastRoutes: the inference routes, dispatched without FastAPI's per-request machinery.

Every request to an engine pays for routing, dependency solving and the exception-handler
wrappers before its handler runs; measured, that was a large share of the façade's own time
per request (docs/performance-analysis.md). These handlers take nothing from FastAPI (a
Starlette `Request` in, a `Response` out), so this ASGI layer calls them directly for an
exact `POST` path and hands everything else to the app unchanged. It sits inside
RequestContextMiddleware, so keys, limits, request ids, access logs and metrics apply alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from vllama.server.errors import client_gone_response
from vllama.server.middleware import INFERENCE_ROUTES
from vllama.server.routes import ollama, openai

Handler = Callable[[Request], Awaitable[Response]]

ROUTES: dict[str, Handler] = {
    "/v1/chat/completions": partial(openai.forward, route="/v1/chat/completions"),
    "/v1/completions": partial(openai.forward, route="/v1/completions"),
    "/v1/embeddings": partial(openai.forward, route="/v1/embeddings"),
    "/api/chat": partial(ollama.generation, kind="chat"),
    "/api/generate": partial(ollama.generation, kind="generate"),
    "/api/embed": ollama.embed,
    "/api/embeddings": ollama.embeddings,
}
# One list of inference routes: the middleware limits and queues the same ones.
assert set(ROUTES) == INFERENCE_ROUTES, "fast routes and INFERENCE_ROUTES disagree"


class FastRoutes:
    def __init__(self, app: ASGIApp, routes: dict[str, Handler] | None = None) -> None:
        self.app = app
        self.routes = ROUTES if routes is None else routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = None
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            handler = self.routes.get(scope["path"])
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except ClientDisconnect:
            response = client_gone_response(scope["path"])  # as the app's handler answers
        await response(scope, receive, send)
