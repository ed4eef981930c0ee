"""The real app (`create_app`) in front of a recording pool: the real EnginePool's model
table, aliases and resolution, with the three calls that reach an engine answered from
what the test scripts. Requests go through httpx's ASGI transport, so the middleware,
FastRoutes and the route table all take part; nothing listens on a port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI

from vllama.config import Settings
from vllama.server.app import create_app
from vllama.upstream.discovery import ModelCard
from vllama.upstream.pool import EnginePool, ServedModel, UpstreamResponse

CHAT = "vllama-demo"
EMBED = "all-minilm"
ENGINES = [
    {"url": "http://127.0.0.1:9", "models": [CHAT], "capabilities": ["completion"]},
    {"url": "http://127.0.0.1:10", "models": [EMBED], "capabilities": ["embedding"]},
]


@dataclass
class Call:
    kind: str  # "stream_events", "post_json" or "forward"
    model: str
    path: str
    body: Any
    headers: dict[str, str]


@dataclass
class Script:
    """What the engine answers next."""

    events: list[dict[str, Any]] = field(default_factory=list)  # stream_events
    answer: dict[str, Any] = field(default_factory=dict)  # post_json
    status: int = 200  # forward
    headers: dict[str, str] = field(default_factory=dict)  # forward
    chunks: list[bytes] = field(default_factory=list)  # forward
    fail: Exception | None = None  # raised instead of answering
    fail_after: int | None = None  # stream_events: raised after this many events


class RecordingPool(EnginePool):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        for engine in self.engines():  # as after a passed health check and discovery
            engine.healthy = True
            engine.cards = [
                ModelCard(m, 512, f"/models/{m}", 1, None) for m in engine.config.models
            ]
        self._rebuild()
        self.calls: list[Call] = []
        self.script = Script()

    def _record(self, kind: str, model: ServedModel, path: str, body: Any, headers: Any) -> None:
        self.calls.append(Call(kind, model.id, path, body, dict(headers or {})))
        if self.script.fail is not None and self.script.fail_after is None:
            raise self.script.fail

    @contextlib.asynccontextmanager
    async def stream_events(
        self,
        model: ServedModel,
        path: str,
        body: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        large: bool = False,
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        self._record("stream_events", model, path, body, headers)
        script = self.script

        async def events() -> AsyncIterator[dict[str, Any]]:
            for i, event in enumerate(script.events):
                if script.fail is not None and i == script.fail_after:
                    raise script.fail
                yield event

        yield events()

    async def post_json(
        self,
        model: ServedModel,
        path: str,
        body: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        large: bool = False,
    ) -> dict[str, Any]:
        self._record("post_json", model, path, body, headers)
        return self.script.answer

    @contextlib.asynccontextmanager
    async def forward(
        self,
        model: ServedModel | None,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> AsyncIterator[UpstreamResponse]:
        assert model is not None
        self._record("forward", model, path, body, headers)

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in self.script.chunks:
                yield chunk

        yield UpstreamResponse(self.script.status, self.script.headers, "stub", chunks())


def make_app(**settings: Any) -> tuple[FastAPI, RecordingPool]:
    s = Settings.model_validate({"engines": ENGINES, "aliases": {"demo": CHAT}, **settings})
    app = create_app(s)
    pool = RecordingPool(s)
    app.state.pool = pool
    return app, pool


def client_for(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://localhost")


def chat_event(content: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}


USAGE_EVENT: dict[str, Any] = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
