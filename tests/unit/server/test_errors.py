"""Error bodies per API shape, and the exception handlers on a bare app."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from vllama.server.errors import error_body_for_path, install_error_handlers
from vllama.upstream.errors import EngineHTTPError, ModelNotFound, UpstreamError


def test_shapes() -> None:
    assert json.loads(error_body_for_path("/api/chat", 404, "model 'x' not found")) == {
        "error": "model 'x' not found"
    }
    body = json.loads(error_body_for_path("/v1/chat/completions", 404, "nope", param="model"))
    assert body == {
        "error": {"message": "nope", "type": "not_found_error", "code": 404, "param": "model"}
    }


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/x")
    @app.post("/api/x")
    async def x(n: int) -> dict[str, int]:
        return {"n": n}

    @app.get("/api/missing")
    async def missing() -> None:
        raise ModelNotFound("ghost")

    @app.get("/v1/busy")
    async def busy() -> None:
        raise UpstreamError("server busy", status=503, retry_after=3)

    @app.get("/v1/engine")
    async def engine() -> None:
        raise EngineHTTPError(422, "bad value")

    @app.get("/api/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    return TestClient(app, raise_server_exceptions=False)


def test_404_and_405_in_each_shape(client: TestClient) -> None:
    r = client.get("/v1/unknown")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.get("/api/unknown")
    assert r.status_code == 404 and "unknown path /api/unknown" in r.json()["error"]
    r = client.get("/v1/x")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert "use POST" in r.json()["error"]["message"]


def test_validation_names_the_field(client: TestClient) -> None:
    r = client.post("/api/x?n=abc")
    assert r.status_code == 400
    assert "'n'" in r.json()["error"]


def test_upstream_errors_keep_status_message_and_retry_after(client: TestClient) -> None:
    r = client.get("/api/missing")
    assert (r.status_code, r.json()) == (404, {"error": "model 'ghost' not found"})
    r = client.get("/v1/busy")
    assert r.status_code == 503 and r.headers["retry-after"] == "3"
    r = client.get("/v1/engine")
    assert r.status_code == 422 and r.json()["error"]["message"] == "bad value"


def test_unhandled_is_a_500_without_internals(client: TestClient) -> None:
    r = client.get("/api/boom")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert "secret" not in r.text and "Traceback" not in r.text
