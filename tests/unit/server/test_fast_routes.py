"""FastRoutes: an exact POST path goes straight to its handler; any other method or path,
and anything under a root_path, goes to the app unchanged; a client that hangs up while
sending its body gets the same 499 answer the app's handler would give."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response

from vllama.server.fast_routes import ROUTES, FastRoutes


class Recorder:
    def __init__(self) -> None:
        self.app_calls: list[str] = []
        self.sent: list[dict[str, Any]] = []

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.app_calls.append(scope.get("path", scope["type"]))
        if scope["type"] == "http":
            await PlainTextResponse("from the app")(scope, receive, send)

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"{}", "more_body": False}


def scope(method: str, path: str, root_path: str = "") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": root_path,
            "headers": [], "query_string": b""}  # fmt: skip


async def handler(request: Request) -> Response:
    return PlainTextResponse(f"fast {request.scope['path']}")


async def test_exact_post_paths_are_dispatched_directly() -> None:
    rec = Recorder()
    fast = FastRoutes(rec.app, {"/v1/chat/completions": handler})
    await fast(scope("POST", "/v1/chat/completions"), receive, rec.send)
    assert rec.app_calls == []
    assert rec.sent[1]["body"] == b"fast /v1/chat/completions"


async def test_everything_else_goes_to_the_app() -> None:
    rec = Recorder()
    fast = FastRoutes(rec.app, {"/v1/chat/completions": handler})
    for s in (
        scope("GET", "/v1/chat/completions"),
        scope("POST", "/v1/chat/completions/"),
        scope("POST", "/v1/models"),
        scope("POST", "/v1/chat/completions", root_path="/prefix"),
        {"type": "lifespan"},
    ):
        await fast(s, receive, rec.send)
    assert len(rec.app_calls) == 5


async def test_a_client_gone_while_sending_gets_499_in_the_path_s_shape() -> None:
    async def gone(request: Request) -> Response:
        raise ClientDisconnect()

    rec = Recorder()
    await FastRoutes(rec.app, {"/api/chat": gone})(scope("POST", "/api/chat"), receive, rec.send)
    assert rec.sent[0]["status"] == 499
    assert b'"error"' in rec.sent[1]["body"]


def test_the_inference_routes_are_all_fast() -> None:
    assert set(ROUTES) == {"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                           "/api/chat", "/api/generate", "/api/embed", "/api/embeddings"}  # fmt: skip


async def test_an_unexpected_error_in_a_handler_is_a_500_in_the_path_s_shape() -> None:
    # FastRoutes runs outside Starlette's error middleware: it answers as the app would.
    async def broken(request: Request) -> Response:
        raise RuntimeError("bug")

    for path in ("/api/chat", "/v1/completions"):
        rec = Recorder()
        s = {**scope("POST", path), "state": {"request_id": "rid-1"}}
        await FastRoutes(rec.app, {path: broken})(s, receive, rec.send)
        assert rec.sent[0]["status"] == 500 and rec.app_calls == []
        error = json.loads(rec.sent[1]["body"])["error"]
        message = error if path.startswith("/api/") else error["message"]
        assert path.startswith("/api/") or error["type"] == "server_error"
        assert "rid-1" in message and "bug" not in message
