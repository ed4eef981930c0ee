"""The route table: every path the façade answers, written once.

FastAPI's router (`api_router`), FastRoutes (the inference handlers called directly) and
the middleware's route sets (which routes are limited and queued, which are open without
a key, the `route` label of metrics and logs) are all built from `ROUTES`. A route added
here is routed, protected and counted alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import APIRouter
from starlette.responses import Response

from vllama.server.routes import health, metrics, openai
from vllama.server.routes.docs import openapi_json
from vllama.server.routes.ollama import chat_generate, embeddings, listing, management

GET = ("GET",)
GET_HEAD = ("GET", "HEAD")
POST = ("POST",)


@dataclass(frozen=True)
class Route:
    path: str  # FastAPI's template: `{name}` or `{name:path}` for a parameter
    methods: tuple[str, ...]
    endpoint: Callable[..., Awaitable[Response]]
    # Reaches an engine: rate limited and queued by the middleware, and (POST, one
    # argument: the request) dispatched by FastRoutes without FastAPI's machinery.
    inference: bool = False
    open: bool = False  # answered without an API key: clients probe it before they have one
    # Changes the model store or routing: needs an admin key when keys are configured.
    admin: bool = False
    label: str | None = None  # the metrics/log `route` label, when not the path itself

    @property
    def route_label(self) -> str:
        return self.label or self.path


ROUTES: tuple[Route, ...] = (
    # Ollama
    Route("/", GET_HEAD, listing.heartbeat, open=True),
    Route("/api/version", GET_HEAD, listing.version, open=True),
    Route("/api/chat", POST, chat_generate.chat, inference=True),
    Route("/api/generate", POST, chat_generate.generate, inference=True),
    Route("/api/embed", POST, embeddings.embed, inference=True),
    Route("/api/embeddings", POST, embeddings.embeddings, inference=True),
    Route("/api/tags", GET_HEAD, listing.tags),
    Route("/api/ps", GET, listing.ps),
    Route("/api/show", POST, listing.show),
    Route("/api/pull", POST, management.pull, admin=True),
    Route("/api/push", POST, management.push, admin=True),
    Route("/api/create", POST, management.create, admin=True),
    Route("/api/copy", POST, management.copy, admin=True),
    Route("/api/delete", ("DELETE",), management.delete, admin=True),
    Route("/api/blobs/{digest}", ("HEAD",), management.blob_exists, admin=True),
    Route("/api/blobs/{digest}", POST, management.blob_upload, admin=True),
    # OpenAI
    Route("/v1/chat/completions", POST, openai.chat_completions, inference=True),
    Route("/v1/completions", POST, openai.completions, inference=True),
    Route("/v1/embeddings", POST, openai.embeddings, inference=True),
    Route("/v1/models", GET, openai.list_models),
    Route("/v1/models/{model_id:path}", GET, openai.retrieve_model, label="/v1/models/{model}"),
    # The façade's own
    Route("/health", GET, health.health, open=True),
    Route("/health/ready", GET, health.ready, open=True),
    Route("/metrics", GET, metrics.metrics),
    Route("/openapi.json", GET, openapi_json),  # 404 unless `openapi = true`
)


def _templated(route: Route) -> bool:
    return "{" in route.path


INFERENCE_ROUTES = frozenset(r.path for r in ROUTES if r.inference)
# By route label (a template for templated paths), as the middleware checks them.
ADMIN_ROUTES = frozenset(r.route_label for r in ROUTES if r.admin)
OPEN_PATHS = frozenset(r.path for r in ROUTES if r.open)
# Route label values of exact paths; templated ones are matched by the prefix before `{`.
KNOWN_ROUTES = frozenset(r.path for r in ROUTES if not _templated(r))
PREFIX_ROUTES = tuple(
    dict.fromkeys((r.path.split("{", 1)[0], r.route_label) for r in ROUTES if _templated(r))
)


def api_router() -> APIRouter:
    router = APIRouter()
    for r in ROUTES:
        router.add_api_route(r.path, r.endpoint, methods=list(r.methods))
    return router
