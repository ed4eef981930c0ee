"""The route table feeds FastAPI's router, FastRoutes and the middleware's route sets: a
route is routed, dispatched, protected and labelled from its one line."""

from __future__ import annotations

from fastapi.routing import APIRoute

from vllama.config import Settings
from vllama.server import fast_routes, middleware, route_table
from vllama.server.app import create_app


def test_the_app_serves_exactly_the_table() -> None:
    app = create_app(Settings())
    served = {
        (method, r.path) for r in app.routes if isinstance(r, APIRoute) for method in r.methods
    }
    table = {(method, r.path) for r in route_table.ROUTES for method in r.methods}
    assert served == table


def test_fast_routes_are_the_inference_routes() -> None:
    assert set(fast_routes.ROUTES) == middleware.INFERENCE_ROUTES == {
        "/api/chat", "/api/generate", "/api/embed", "/api/embeddings",
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
    }  # fmt: skip
    for r in route_table.ROUTES:
        if r.inference:
            assert r.methods == ("POST",) and fast_routes.ROUTES[r.path] is r.endpoint


def test_open_paths_and_labels_come_from_the_table() -> None:
    assert {"/", "/api/version", "/health", "/health/ready"} == middleware.OPEN_PATHS
    assert middleware.route_label("/api/tags") == "/api/tags"
    assert middleware.route_label("/api/blobs/sha256:00") == "/api/blobs/{digest}"
    assert middleware.route_label("/v1/models/org/m") == "/v1/models/{model}"
    assert middleware.route_label("/wp-admin") == "other"
