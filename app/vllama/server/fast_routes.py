"""FastRoutes: the inference routes, dispatched without FastAPI's per-request machinery.

Every request to an engine pays for routing, dependency solving and the exception-handler
wrappers before its handler runs; measured, that was a large share of the façade's own time
per request (docs/performance-analysis.md). These handlers take nothing from FastAPI (a
Starlette `Request` in, a `Response` out), so this ASGI layer calls them directly for an
exact `POST` path and hands everything else to the app unchanged. It sits inside
RequestContextMiddleware, so keys, limits, request ids, access logs and metrics apply alike,
and outside Starlette's own middleware (server/app.py), so an unexpected exception in a
handler is answered here as the app's handler for it would: a 500 in the API's shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from vllama.server import route_table
from vllama.server.errors import client_gone_response, internal_error_response

Handler = Callable[[Request], Awaitable[Response]]

# The inference routes of the table: the same ones the middleware limits and queues.
ROUTES: dict[str, Handler] = {r.path: r.endpoint for r in route_table.ROUTES if r.inference}


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
        except Exception as exc:  # nothing was sent yet: a 500 in the API's shape
            response = internal_error_response(request, exc)
        await response(scope, receive, send)
