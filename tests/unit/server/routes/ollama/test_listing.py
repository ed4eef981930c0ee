"""/, /api/version, /api/tags, /api/ps and /api/show through the real app: served models
and their aliases (configured and copied) in Ollama's shapes, unknown names refused."""

from __future__ import annotations

import pytest

from tests.unit.server.routes.stub_pool import CHAT, EMBED, client_for, make_app

pytestmark = pytest.mark.timeout(30)


async def test_heartbeat_and_version() -> None:
    app, _ = make_app(ollama_version="0.9.9")
    async with client_for(app) as c:
        root = await c.get("/")
        head = await c.head("/api/version")
        version = await c.get("/api/version")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert head.status_code == 200 and version.json() == {"version": "0.9.9"}


async def test_tags_list_every_served_model_then_its_aliases() -> None:
    app, pool = make_app(aliases={"demo": CHAT, "b-demo": CHAT, "gone": "not-served"})
    pool.aliases.add("copied:latest", EMBED)
    async with client_for(app) as c:
        tags = (await c.get("/api/tags")).json()["models"]
    assert [m["name"] for m in tags] == [
        "vllama-demo:latest",
        "b-demo:latest",
        "demo:latest",
        "all-minilm:latest",
        "copied:latest",
    ]
    assert all(m["details"]["format"] for m in tags)


async def test_ps_lists_engine_ids_only() -> None:
    app, _ = make_app()
    async with client_for(app) as c:
        ps = (await c.get("/api/ps")).json()["models"]
    assert [m["name"] for m in ps] == ["vllama-demo:latest", "all-minilm:latest"]


async def test_show_takes_an_alias_or_the_legacy_name_key() -> None:
    app, _ = make_app()
    async with client_for(app) as c:
        by_model = await c.post("/api/show", json={"model": "demo"})
        by_name = await c.post("/api/show", json={"name": CHAT})
        ghost = await c.post("/api/show", json={"model": "ghost"})
    assert by_model.status_code == 200 and "completion" in by_model.json()["capabilities"]
    assert by_name.status_code == 200
    assert (ghost.status_code, ghost.json()) == (404, {"error": "model 'ghost' not found"})
