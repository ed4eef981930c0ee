"""The published OpenAPI document (docs/openapi.json) against the real façade in front of
the real engines: the file, the served /openapi.json and the app's routes agree; then
schemathesis fuzzes every operation with data that fits the document and data that does
not, and any 5xx, any answer outside the path's error shape, or any traceback in an
answer fails the run.

Bounded: FUZZ_EXAMPLES examples per operation and generation mode (derandomised, so CI is
repeatable; set VLLAMA_FUZZ_EXAMPLES and VLLAMA_FUZZ_SEED to explore), with generation
lengths capped so the tiny model answers at once. About 2 minutes on 2 cores.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis  # the test extra (pyproject.toml): a missing tool fails, never skips
from hypothesis import HealthCheck, given, seed, settings

from tests.engines import REPO, Engine
from tests.facade import run_facade
from vllama.config import Settings
from vllama.server.app import create_app
from vllama.server.openapi import document, operations

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900, func_only=True)]

CHAT = "vllama-demo"
EMBED = "all-minilm"
FUZZ_EXAMPLES = int(os.environ.get("VLLAMA_FUZZ_EXAMPLES", "12"))
FUZZ_SEED = int(os.environ.get("VLLAMA_FUZZ_SEED", "13"))
# Generation lengths: whatever the document allows, the fuzz run keeps answers short.
_CAPS = {"max_tokens": 8, "max_completion_tokens": 8, "num_predict": 8, "n": 2, "best_of": 2}


def app_operations() -> set[tuple[str, str]]:
    """What the app routes (the document describes the APIs, not itself)."""
    from fastapi.routing import APIRoute

    app = create_app(Settings())
    return {
        (method, route.path.replace("{model_id:path}", "{model}"))
        for route in app.routes
        if isinstance(route, APIRoute) and route.path != "/openapi.json"
        for method in route.methods
    }


def test_the_document_the_file_and_the_routes_agree() -> None:
    kept = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert kept == document(), "docs/openapi.json is stale: python -m vllama.server.openapi"
    assert operations(kept) == app_operations()
    with run_facade(engines=[{"url": "http://127.0.0.1:9"}], openapi=True) as url:
        served = httpx.get(f"{url}/openapi.json", timeout=30)
    assert served.status_code == 200 and served.json() == kept
    with run_facade(engines=[{"url": "http://127.0.0.1:9"}]) as url:  # off by default
        assert httpx.get(f"{url}/openapi.json", timeout=30).status_code == 404


def fuzz_document() -> dict[str, Any]:
    """The document with model names drawn from what is served (else nearly every case is
    a 404) and generation lengths capped."""
    doc = copy.deepcopy(document())

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                for name, cap in _CAPS.items():
                    if name in props and props[name].get("type") == "integer":
                        props[name] = {**props[name], "maximum": cap}
                for name in ("model", "source", "destination"):
                    if name in props and props[name].get("type") == "string":
                        props[name] = {"type": "string", "enum": [CHAT, EMBED, "demo", "ghost"]}
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return doc


@pytest.fixture(scope="module")
def fuzzed_facade(chat_engine: Engine, embed_engine: Engine) -> Iterator[str]:
    with run_facade(
        engines=[{"url": chat_engine.url}, {"url": embed_engine.url}],
        aliases={"demo": CHAT},
        openapi=True,
        log_format="text",
    ) as url:
        yield url


_SCHEMA = schemathesis.openapi.from_dict(fuzz_document())
_OPERATIONS = [result.ok() for result in _SCHEMA.get_all_operations()]
# Data that does not fit needs a body to put it in (a path parameter may be any string).
_CASES = [
    (op, mode)
    for op in _OPERATIONS
    for mode in ("positive", "negative")
    if mode == "positive" or "requestBody" in op.definition.raw
]


def check_answer(case: Any, response: Any) -> None:
    path = case.operation.path
    text = response.content.decode("utf-8", "replace")
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {text[:300]}"
    assert response.status_code < 500, where
    assert "Traceback" not in text and 'File "' not in text, where
    if response.status_code >= 400 and case.method != "HEAD":
        body = json.loads(text)
        if path.startswith("/v1/"):
            err = body["error"]
            assert isinstance(err["message"], str) and isinstance(err["type"], str), where
        else:
            assert isinstance(body["error"], str), where


@pytest.mark.parametrize(
    ("operation", "mode"), _CASES, ids=[f"{op.label} {mode}" for op, mode in _CASES]
)
def test_fuzz(fuzzed_facade: str, operation: Any, mode: str) -> None:
    import requests

    generation = schemathesis.GenerationMode(mode)
    session = requests.Session()

    @seed(FUZZ_SEED)
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=generation))
    def run(case: Any) -> None:
        response = case.call(base_url=fuzzed_facade, session=session, timeout=60)
        check_answer(case, response)

    try:
        run()
    finally:
        session.close()
