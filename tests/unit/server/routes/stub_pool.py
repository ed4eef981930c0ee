"""The real app (`create_app`) in front of a recording pool: the real EnginePool's model
table, aliases and resolution, with the three calls that reach an engine answered from
what the test scripts. Requests go through httpx's ASGI transport, so the middleware,
FastRoutes and the route table all take part; nothing listens on a port."""

from __future__ import annotations

import asyncio
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
    kind: str  # "stream_batches", "generate_whole", "post_json" or "forward"
    model: str
    path: str
    body: Any
    headers: dict[str, str]


@dataclass
class Script:
    """What the engine answers next."""

    events: list[dict[str, Any]] = field(default_factory=list)  # stream_batches, one a read
    answer: dict[str, Any] = field(default_factory=dict)  # post_json, generate_whole
    generation_s: float | None = None  # generate_whole: the engine's generation time
    delay_s: float = 0.0  # generate_whole: how long the answer takes
    status: int = 200  # forward
    headers: dict[str, str] = field(default_factory=dict)  # forward
    chunks: list[bytes] = field(default_factory=list)  # forward
    fail: Exception | None = None  # raised instead of answering
    fail_after: int | None = None  # stream_batches: raised after this many events


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
    async def stream_batches(
        self,
        model: ServedModel,
        path: str,
        body: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        large: bool = False,
        affinity: bytes | None = None,
    ) -> AsyncIterator[AsyncIterator[list[dict[str, Any]]]]:
        self._record("stream_batches", model, path, body, headers)
        script = self.script

        async def batches() -> AsyncIterator[list[dict[str, Any]]]:
            for i, event in enumerate(script.events):
                if script.fail is not None and i == script.fail_after:
                    raise script.fail
                yield [event]

        yield batches()

    async def generate_whole(
        self,
        model: ServedModel,
        path: str,
        body: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        large: bool = False,
        affinity: bytes | None = None,
    ) -> tuple[dict[str, Any], float | None]:
        self._record("generate_whole", model, path, body, headers)
        await asyncio.sleep(self.script.delay_s)
        return self.script.answer, self.script.generation_s

    async def post_json(
        self,
        model: ServedModel,
        path: str,
        body: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        large: bool = False,
        affinity: bytes | None = None,
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
        affinity: bytes | None = None,
    ) -> AsyncIterator[UpstreamResponse]:
        assert model is not None
        self._record("forward", model, path, body, headers)

        chunks = list(self.script.chunks)

        async def read() -> bytes:
            return chunks.pop(0) if chunks else b""

        yield UpstreamResponse(self.script.status, self.script.headers, "stub", read)


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
