"""What is here: the heartbeat (`/`), /api/version, and the served models as Ollama lists
them (/api/tags, /api/ps, /api/show), with what each model's files say."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from vllama.models.info import ModelFiles, read_model_files
from vllama.server.deps import get_pool, get_settings
from vllama.server.routes.ollama.plumbing import error, read_body
from vllama.translate import models as model_cards
from vllama.translate.fields import model_name
from vllama.upstream.pool import ServedModel


async def heartbeat(request: Request) -> Response:
    return PlainTextResponse("Ollama is running")


async def version(request: Request) -> Response:
    return JSONResponse({"version": get_settings(request).ollama_version})


async def _facts(request: Request, card: ServedModel) -> ModelFiles:
    """What the model's files say (cached; read off the event loop the first time)."""
    return await run_in_threadpool(read_model_files, card.root, get_settings(request).cache_dir)


async def tags(request: Request) -> Response:
    """Served models and, with on-demand engines, every pulled model (as Ollama lists
    what is on disk: a client picks from this list, and naming one loads it)."""
    pool = get_pool(request)
    entries: list[dict[str, Any]] = []
    for card in [*pool.models(), *await pool.offline_models()]:
        facts = await _facts(request, card)
        names = [card.id, *pool.aliases.of(card.id)]  # the engine's id, then its aliases
        entries.extend(model_cards.tags_entry(card, facts, n) for n in names)
    return JSONResponse({"models": entries})


async def ps(request: Request) -> Response:
    """Loaded models: on-demand ones with their real expiry and memory."""
    pool = get_pool(request)
    entries: list[dict[str, Any]] = []
    for card in pool.models():
        facts = await _facts(request, card)
        state = pool.load_state(card)
        if state is None:
            entries.append(model_cards.ps_entry(card, facts, card.id))
        else:
            entries.append(
                model_cards.ps_entry(
                    card,
                    facts,
                    card.id,
                    expires_unix=state.expires_at,
                    size=state.size,
                    size_vram=state.size_vram,
                )
            )
    return JSONResponse({"models": entries})


async def show(request: Request) -> Response:
    """A served or pulled model (without loading it: `ollama run` asks this first)."""
    try:
        body = await read_body(request)
        name = model_name(body, legacy_name=True)
        card = await get_pool(request).describe(name)
        request.state.model = card.id
    except Exception as exc:
        return error(request, exc)
    facts = await _facts(request, card)
    return JSONResponse(model_cards.show_response(card, facts, name))
