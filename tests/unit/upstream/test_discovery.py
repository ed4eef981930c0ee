"""Discovery against a small in-process engine (aiohttp.web): the model cards of
`GET /v1/models` (odd fields tolerated, bad answers refused), the generate-or-embed probe,
the API key sent along, and the pool asking its model-config reader only when the engine
does not tell."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.procs import free_port
from vllama.config import EngineConfig, Settings
from vllama.upstream.discovery import ModelCard, fetch_models, probe_kind
from vllama.upstream.pool import EnginePool

pytestmark = pytest.mark.timeout(30)


class Engine:
    """Answers /health, /v1/models with `models_body`, and the probe with `probe_status`."""

    def __init__(self) -> None:
        self.models_body: Any = {"object": "list", "data": []}
        self.models_status = 200
        self.probe_status = 400
        self.auth: list[str | None] = []
        self.url = ""

    async def health(self, _: web.Request) -> web.Response:
        return web.Response()

    async def models(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        return web.json_response(self.models_body, status=self.models_status)

    async def chat(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        return web.json_response({"error": "probe"}, status=self.probe_status)


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    fake = Engine()
    app = web.Application()
    app.router.add_get("/health", fake.health)
    app.router.add_get("/v1/models", fake.models)
    app.router.add_post("/v1/chat/completions", fake.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


async def test_cards_keep_what_vllm_reports_and_tolerate_odd_items(engine: Engine) -> None:
    engine.models_body = {
        "data": [
            {"id": "m", "max_model_len": 512, "root": "/models/m", "created": 7},
            {"id": "bare"},
            {"id": "odd", "max_model_len": "512", "root": 3, "created": "yesterday"},
            {"no": "id"},
            "not an object",
        ]
    }
    async with aiohttp.ClientSession() as session:
        cards = await fetch_models(session, EngineConfig(url=engine.url), 5)
    assert cards == [
        ModelCard("m", 512, "/models/m", 7, None),
        ModelCard("bare", None, None, 0, None),
        ModelCard("odd", None, None, 0, None),
    ]


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [(500, {"data": []}, "answered HTTP 500"), (200, {"object": "list"}, "no `data` list")],
)
async def test_bad_model_lists_are_errors(
    engine: Engine, status: int, body: Any, message: str
) -> None:
    engine.models_status, engine.models_body = status, body
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match=message):
            await fetch_models(session, EngineConfig(url=engine.url), 5)


@pytest.mark.parametrize(
    ("status", "kind"), [(404, "embedding"), (400, "completion"), (422, "completion"), (500, None)]
)
async def test_probe_tells_generating_from_pooling_engines(
    engine: Engine, status: int, kind: str | None
) -> None:
    engine.probe_status = status
    async with aiohttp.ClientSession() as session:
        assert await probe_kind(session, EngineConfig(url=engine.url), 5) == kind


async def test_an_unreachable_engine_probes_as_unknown() -> None:
    async with aiohttp.ClientSession() as session:
        dead = EngineConfig(url=f"http://127.0.0.1:{free_port()}")
        assert await probe_kind(session, dead, 2) is None


async def test_the_engine_key_is_sent(engine: Engine) -> None:
    config = EngineConfig(url=engine.url, api_key="sk-engine")
    async with aiohttp.ClientSession() as session:
        await fetch_models(session, config, 5)
        await probe_kind(session, config, 5)
    assert engine.auth == ["Bearer sk-engine", "Bearer sk-engine"]


async def test_the_pool_reads_model_files_only_when_the_engine_does_not_tell(
    engine: Engine,
) -> None:
    engine.models_body = {"data": [{"id": "minilm", "root": "/models/minilm"}]}
    engine.probe_status = 500  # inconclusive: the model's config.json decides
    asked: list[str | None] = []

    def model_config(root: str | None) -> dict[str, Any]:
        asked.append(root)
        return {"architectures": ["BertModel"]}

    settings = Settings.model_validate({"engines": [{"url": engine.url}]})
    pool = EnginePool(settings, model_config=model_config)
    await pool.start()
    try:
        assert pool.resolve("minilm").capabilities == {"embedding"}
        assert asked == ["/models/minilm"]
    finally:
        await pool.close()
    engine.probe_status = 404  # the engine tells: no file is read
    asked.clear()
    pool = EnginePool(settings, model_config=model_config)
    await pool.start()
    try:
        assert pool.resolve("minilm").capabilities == {"embedding"}
        assert asked == []
    finally:
        await pool.close()
