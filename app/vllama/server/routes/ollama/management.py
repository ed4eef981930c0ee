"""Model management: what a running vLLM can and cannot do.

Pull and delete of models no engine serves go to the model store (`app.state.model_store`,
set by `vllama serve`); copy makes an alias in the pool's registry; push, create and blob
uploads are refused with a message that says what to do instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from vllama.server.deps import get_pool, get_settings
from vllama.server.routes.ollama.plumbing import NDJSON, Refused, error, ndjson_line, read_body
from vllama.translate import TranslationError
from vllama.translate.fields import model_name, opt_str
from vllama.upstream.aliases import AliasRefused
from vllama.upstream.errors import UpstreamError


class ModelStore(Protocol):
    """What the model store offers the API (models.store.ApiModelStore implements it).

    Without one (`app.state.model_store` unset), pull/delete of models that no engine
    serves are refused with instructions.
    """

    def pull(self, name: str) -> AsyncIterator[dict[str, Any]]: ...  # Ollama progress objects
    # False: not in the store; models.store.ModelInUse (status 409) when `serving` names it.
    async def delete(self, name: str, serving: Collection[str] = ()) -> bool: ...


def _store(request: Request) -> ModelStore | None:
    return getattr(request.app.state, "model_store", None)


def _is_served(request: Request, name: str) -> bool:
    try:
        get_pool(request).resolve(name)
    except UpstreamError:
        return False
    return True


_PULL_STEPS = ("pulling manifest", "verifying sha256 digest", "writing manifest", "success")


async def pull(request: Request) -> Response:
    try:
        body = await read_body(request)
        name = model_name(body, legacy_name=True)
    except Exception as exc:
        return error(request, exc)
    stream = body.get("stream") is not False
    store = _store(request)
    if _is_served(request, name):  # already there: the progress of a pull with nothing to do
        if not stream:
            return JSONResponse({"status": "success"})
        return StreamingResponse(
            iter([ndjson_line({"status": step}) for step in _PULL_STEPS]), media_type=NDJSON
        )
    if store is None:
        return error(
            request,
            Refused(
                404,
                f"model '{name}' is not served by any engine: download it with `vllama pull "
                f"{name}`, then start an engine for it with `vllama serve --model {name}`",
            ),
        )
    progress = store.pull(name)
    if not stream:
        last: dict[str, Any] = {}
        try:
            async for last in progress:
                if "error" in last:
                    return error(request, Refused(500, str(last["error"])))
        except Exception as exc:
            return error(request, Refused(500, f"pull failed: {exc}"))
        return JSONResponse(last or {"status": "success"})

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for item in progress:
                yield ndjson_line(item)
        except Exception as exc:
            yield ndjson_line({"error": f"pull failed: {exc}"})

    return StreamingResponse(lines(), media_type=NDJSON)


async def push(request: Request) -> Response:
    return error(
        request,
        Refused(
            400,
            "vllama does not push models: vLLM serves Hugging Face models; upload them with "
            "`huggingface-cli upload` instead",
        ),
    )


async def create(request: Request) -> Response:
    return error(
        request,
        Refused(
            400,
            "vllama does not create models from Modelfiles: give the model a name with an "
            "alias in vllama.toml ([aliases]) and change its sampling defaults with vLLM's "
            "--override-generation-config",
        ),
    )


def _per_worker_aliases(request: Request) -> Refused | None:
    """With several worker processes each holds its own alias registry: a change made in
    one would not reach the others, so runtime alias changes are refused."""
    workers = get_settings(request).workers
    if workers <= 1:
        return None
    return Refused(
        409,
        f"aliases cannot change while the façade runs {workers} worker processes (each keeps "
        "its own): put the alias under [aliases] in the config (or VLLAMA_ALIASES) and "
        "restart, or run with workers = 1",
    )


async def copy(request: Request) -> Response:
    """A copy of a served or pulled model is an alias (in memory, until restart)."""
    refused = _per_worker_aliases(request)
    if refused is not None:
        return error(request, refused)
    try:
        body = await read_body(request)
        source = opt_str(body, "source")
        destination = opt_str(body, "destination")
        if not source or not destination:
            raise TranslationError("source and destination are required", "source")
        card = await get_pool(request).describe(source)  # served, or pulled (on-demand)
        get_pool(request).aliases.add(destination, card.id)
    except UpstreamError:
        return error(request, Refused(404, f'model "{source}" not found'))
    except AliasRefused as exc:
        return error(request, Refused(400, f"destination: {exc}"))
    except Exception as exc:
        return error(request, exc)
    return Response(status_code=200)


async def delete(request: Request) -> Response:
    try:
        body = await read_body(request)
        name = model_name(body, legacy_name=True)
    except Exception as exc:
        return error(request, exc)
    pool = get_pool(request)
    if name in pool.aliases:  # an alias (from config or /api/copy)
        refused = _per_worker_aliases(request)
        if refused is not None:
            return error(request, refused)
    if pool.aliases.remove(name):
        return Response(status_code=200)
    if _is_served(request, name):
        return error(
            request,
            Refused(
                409,
                f"model '{name}' is being served by a running engine: unload it with "
                f"`vllama stop {name}` (or stop the engine that serves it), then delete it",
            ),
        )
    store = _store(request)
    if store is None:
        return error(request, Refused(404, f"model '{name}' not found"))
    # Files an engine may serve stay, whether that engine answers right now or not.
    serving, unknown = get_pool(request).possibly_served()
    if unknown:
        return error(
            request,
            Refused(
                409,
                f"cannot tell whether model '{name}' is in use: {len(unknown)} configured "
                "engine(s) have not answered since the server started, so what they load is "
                "unknown; start them (or remove them from the config), then delete again",
            ),
        )
    try:
        deleted = await store.delete(name, serving)
    except Exception as exc:
        status = getattr(exc, "status", None)
        if status == 409:
            return error(request, Refused(409, str(exc)))
        raise
    if deleted:
        return Response(status_code=200)
    return error(request, Refused(404, f"model '{name}' not found"))


async def blob_exists(digest: str) -> Response:
    return Response(status_code=404)  # vllama keeps no Ollama blobs


async def blob_upload(request: Request, digest: str) -> Response:
    return error(
        request,
        Refused(
            400,
            f"vllama does not store blobs ({digest}): vLLM loads Hugging Face models; put the "
            "model directory on the server and start an engine for it with `vllama serve "
            "--model PATH`",
        ),
    )
