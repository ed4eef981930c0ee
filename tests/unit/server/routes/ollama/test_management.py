"""Pull, push, create, copy, delete and blobs through the real app: what a running vLLM
can do (copy = an alias in the pool's registry; pull/delete through the model store) and
what it refuses, with the message that says what to do instead."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection
from typing import Any

import pytest

from tests.unit.server.routes.stub_pool import CHAT, client_for, make_app

pytestmark = pytest.mark.timeout(30)


class Store:
    """A model store holding `names`; pull reports three progress objects."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)
        self.pulled: list[str] = []
        self.serving: set[str] = set()  # what the route said engines may serve

    async def pull(self, name: str) -> AsyncIterator[dict[str, Any]]:
        self.pulled.append(name)
        for status in ("pulling manifest", "pulling config.json", "success"):
            yield {"status": status}

    async def delete(self, name: str, serving: Collection[str] = ()) -> bool:
        self.serving = set(serving)
        if name not in self.names:
            return False
        self.names.remove(name)
        return True


async def test_pulling_a_served_model_is_a_pull_with_nothing_to_do() -> None:
    app, _ = make_app()
    async with client_for(app) as c:
        streamed = await c.post("/api/pull", json={"model": "demo"})
        single = await c.post("/api/pull", json={"name": CHAT, "stream": False})
    statuses = [json.loads(line)["status"] for line in streamed.text.splitlines()]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert single.json() == {"status": "success"}


async def test_pull_goes_to_the_store_or_says_how_to_get_the_model() -> None:
    app, _ = make_app()
    async with client_for(app) as c:
        refused = await c.post("/api/pull", json={"model": "org/new"})
        store = Store()
        app.state.model_store = store
        streamed = await c.post("/api/pull", json={"model": "org/new"})
        single = await c.post("/api/pull", json={"model": "org/new", "stream": False})
    assert refused.status_code == 404 and "vllama pull org/new" in refused.json()["error"]
    assert [json.loads(line)["status"] for line in streamed.text.splitlines()][-1] == "success"
    assert single.json() == {"status": "success"} and store.pulled == ["org/new", "org/new"]


async def test_copy_makes_an_alias_that_serves_and_delete_forgets_it() -> None:
    app, pool = make_app()
    settings_aliases = dict(app.state.settings.aliases)
    async with client_for(app) as c:
        copied = await c.post("/api/copy", json={"source": "demo", "destination": "mine:latest"})
        names = [m["name"] for m in (await c.get("/api/tags")).json()["models"]]
        shown = await c.post("/api/show", json={"model": "mine"})
        deleted = await c.request("DELETE", "/api/delete", json={"model": "mine:latest"})
        after = await c.post("/api/show", json={"model": "mine"})
    assert copied.status_code == 200 and "mine:latest" in names
    assert shown.status_code == 200 and deleted.status_code == 200
    assert after.status_code == 404
    assert app.state.settings.aliases == settings_aliases  # the config object is left alone
    assert pool.calls == []


async def test_copy_refusals() -> None:
    app, _ = make_app()
    async with client_for(app) as c:
        unknown = await c.post("/api/copy", json={"source": "ghost", "destination": "x"})
        missing = await c.post("/api/copy", json={"source": "demo"})
    assert (unknown.status_code, unknown.json()) == (404, {"error": 'model "ghost" not found'})
    assert missing.status_code == 400 and "required" in missing.json()["error"]


async def test_delete_refuses_a_served_model_and_asks_the_store_for_others() -> None:
    app, _ = make_app()
    app.state.model_store = Store("org/on-disk")
    async with client_for(app) as c:
        served = await c.request("DELETE", "/api/delete", json={"model": CHAT})
        on_disk = await c.request("DELETE", "/api/delete", json={"model": "org/on-disk"})
        unknown = await c.request("DELETE", "/api/delete", json={"model": "org/on-disk"})
    assert served.status_code == 409 and f"vllama stop {CHAT}" in served.json()["error"]
    assert on_disk.status_code == 200
    assert {CHAT, "demo", "/models/vllama-demo"} <= app.state.model_store.serving
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"error": "model 'org/on-disk' not found"},
    )


@pytest.mark.parametrize(
    ("path", "words"),
    [("/api/push", "huggingface-cli upload"), ("/api/create", "[aliases]")],
)
async def test_what_vllm_cannot_do_is_refused_with_what_to_do(path: str, words: str) -> None:
    app, _ = make_app()
    async with client_for(app) as c:
        r = await c.post(path, json={"model": "x"})
    assert r.status_code == 400 and words in r.json()["error"]


async def test_blobs_are_not_kept() -> None:
    app, _ = make_app()
    digest = "sha256:" + "0" * 64
    async with client_for(app) as c:
        head = await c.head(f"/api/blobs/{digest}")
        upload = await c.post(f"/api/blobs/{digest}", content=b"x")
    assert head.status_code == 404
    assert upload.status_code == 400 and "vllama serve --model PATH" in upload.json()["error"]
