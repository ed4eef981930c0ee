"""The Ollama API (`/` and `/api/*`): parse, translate (vllama.translate), forward, translate back.

Chat and generate are always streamed from the engine (usage included), so the final
object's durations and token counts are measured the same way whether or not the client
streams. Model management answers in Ollama's shapes; what a running vLLM cannot do is
refused with a message that says what to do instead (`ModelStore` is the seam for the
model store to do real pulls and deletes later).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, Protocol

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from vllama.models.info import ModelFiles, read_model_files
from vllama.observability.metrics import Metrics
from vllama.server.errors import error_response
from vllama.server.streaming import ProxyStream
from vllama.translate import ModelTraits, Timings, TranslationError, UpstreamCall
from vllama.translate import models as model_cards
from vllama.translate import requests as to_openai
from vllama.translate import responses as to_ollama
from vllama.translate.fields import model_name, opt_str, require_object
from vllama.upstream.errors import ServerBusy, UpstreamError
from vllama.upstream.pool import EnginePool, ServedModel

router = APIRouter()
log = logging.getLogger(__name__)

API = "ollama"
NDJSON = "application/x-ndjson"


class ModelStore(Protocol):
    """What the model store (models/store.py) offers the API once it exists.

    Set `app.state.model_store` to an implementation and pull/delete of models that no
    engine serves go there; without one they are refused with instructions.
    """

    def pull(self, name: str) -> AsyncIterator[dict[str, Any]]: ...  # Ollama progress objects
    async def delete(self, name: str) -> bool: ...  # False: not in the store


# --- plumbing -----------------------------------------------------------------------------


class _Refused(Exception):
    """An answer that is an error: status + Ollama message (+ headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _refusal(exc: Exception) -> _Refused:
    if isinstance(exc, _Refused):
        return exc
    if isinstance(exc, TranslationError):
        return _Refused(400, exc.message)
    if isinstance(exc, ServerBusy):
        return _Refused(exc.status, exc.message, {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, UpstreamError):
        return _Refused(exc.status, exc.message)
    raise exc


def _error(request: Request, exc: Exception) -> Response:
    refused = _refusal(exc)
    return error_response(
        request.scope["path"], refused.status, refused.message, headers=refused.headers
    )


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise _Refused(400, "missing request body")
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise _Refused(400, f"invalid JSON in request body: {exc}") from None
    return require_object(value)


def _pool(request: Request) -> EnginePool:
    pool: EnginePool = request.app.state.pool
    return pool


def _metrics(request: Request) -> Metrics | None:
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    return metrics


def _resolve(request: Request, name: str) -> ServedModel:
    card = _pool(request).resolve(name)
    request.state.model = card.id
    return card


def _upstream_headers(request: Request) -> dict[str, str]:
    request_id = getattr(request.state, "request_id", None)
    return {"X-Request-ID": request_id} if isinstance(request_id, str) else {}


def _with_priority(request: Request, call: UpstreamCall) -> UpstreamCall:
    key = getattr(request.state, "api_key", None)
    priority = getattr(key, "priority", None)
    if isinstance(priority, int):
        call.body["priority"] = priority
    return call


def _record_usage(request: Request, model: str, prompt: int, completion: int) -> None:
    request.state.usage = (prompt, completion)
    metrics = _metrics(request)
    if metrics is not None:
        metrics.add_tokens(model, prompt, completion)


def _traits(request: Request, card: ServedModel) -> ModelTraits:
    return ModelTraits(
        max_model_len=card.max_model_len,
        capabilities=card.capabilities,
        max_image_pixels=request.app.state.settings.max_image_pixels,
    )


def _line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# --- / and /api/version -------------------------------------------------------------------


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def heartbeat() -> Response:
    return PlainTextResponse("Ollama is running")


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version(request: Request) -> Response:
    return JSONResponse({"version": request.app.state.settings.ollama_version})


# --- the upstream stream, in a task of its own -------------------------------------------

_END: Any = object()  # the upstream stream ended normally


class _UpstreamStream:
    """Runs the pool's `stream_events` context in one task of its own.

    Starlette streams the body from another task than the endpoint's, and a client that
    goes away cancels that one; entering and leaving the pool's context in a single task
    keeps its cancel scopes and timeouts valid, and `close` (cancelling it) always ends
    the upstream request.
    """

    def __init__(
        self, events: contextlib.AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]
    ) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=256)  # bounded: backpressure
        self._task = asyncio.create_task(self._run(events))

    async def _run(
        self, events: contextlib.AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]
    ) -> None:
        try:
            async with events as stream:
                async for event in stream:
                    await self._queue.put(event)
            await self._queue.put(_END)
        except Exception as exc:
            await self._queue.put(_Failure(exc))

    async def next(self) -> Any:
        """The next event, `_END`, or the upstream's exception raised here."""
        item = await self._queue.get()
        if isinstance(item, _Failure):
            raise item.exc
        return item

    async def batch(self) -> list[Any]:
        """Every event waiting now (at least one; the last may be `_END`).

        Writing a burst of events as one body chunk saves a send per event.
        """
        items = [await self.next()]
        while items[-1] is not _END and not self._queue.empty():
            items.append(await self.next())
        return items

    async def close(self) -> None:
        """Idempotent; waits until the pool's context has been left (connection closed)."""
        self._task.cancel()
        await asyncio.wait({self._task})  # a cancelled caller still cancels the producer


class _Failure:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc


# --- chat and generate --------------------------------------------------------------------


class _Clock:
    """The figures of the final object, in ns, plus the façade's own time."""

    def __init__(self) -> None:
        self.start = time.perf_counter_ns()
        self.sent = self.start
        self.first: int | None = None
        self.last: int | None = None
        self.own_ns = 0

    def timings(self) -> Timings:
        end = time.perf_counter_ns()
        first = self.first if self.first is not None else end
        last = self.last if self.last is not None else first
        return Timings(
            total_ns=end - self.start,
            load_ns=self.sent - self.start,
            prompt_eval_ns=first - self.sent,
            eval_ns=last - first,
        )


async def generation(request: Request, *, kind: str) -> Response:
    """/api/chat and /api/generate; also called directly by server.fast_routes."""
    route = f"/api/{kind}"
    clock = _Clock()
    try:
        body = await _body(request)
        name = model_name(body)
        card = _resolve(request, name)
        is_load = (
            to_openai.chat_is_load(body) if kind == "chat" else to_openai.generate_is_load(body)
        )
        if is_load:  # Ollama's load / unload: one JSON object, stream or not
            unload = to_openai.is_unload(body)
            return JSONResponse(to_ollama.load_response(kind, name, time.time(), unload=unload))
        if "embedding" in card.capabilities and "completion" not in card.capabilities:
            raise _Refused(400, f'"{name}" does not support {kind}: it is an embedding model')
        translate = to_openai.chat_request if kind == "chat" else to_openai.generate_request
        call = _with_priority(request, translate(body, _traits(request, card)))
        stream = body.get("stream") is not False
    except Exception as exc:
        return _error(request, exc)

    translator = to_ollama.StreamTranslator(kind, name)
    metrics = _metrics(request)
    timer = (
        metrics.stream_timer(API, route, card.id, clock.start / 1e9)
        if metrics is not None
        else None
    )

    def on_event(event: Any) -> list[dict[str, Any]]:
        received = time.perf_counter_ns()
        chunks = translator.feed(event, time.time())
        if chunks:
            if clock.first is None:
                clock.first = received
            if timer is not None:
                timer.chunk(received / 1e9)
            clock.last = received
        clock.own_ns += time.perf_counter_ns() - received
        return chunks

    def finish() -> Timings:
        timings = clock.timings()
        prompt, completion = translator.usage
        _record_usage(request, card.id, prompt, completion)
        if metrics is not None:
            metrics.observe_overhead(API, route, clock.own_ns / 1e9)
        return timings

    events = _pool(request).stream_events(
        card, call.path, call.body, headers=_upstream_headers(request)
    )
    clock.own_ns += time.perf_counter_ns() - clock.start
    clock.sent = time.perf_counter_ns()
    if not stream:
        # One answer: read the engine's stream right here, in the endpoint's own task (no
        # relay task and queue); a failure anywhere is an error answer, as nothing is sent.
        try:
            async with events as upstream_events:
                async for event in upstream_events:
                    on_event(event)
            translator.flush(time.time())
        except Exception as exc:
            return _error(request, exc)
        return JSONResponse(translator.aggregate(finish(), time.time()))

    upstream = _UpstreamStream(events)
    try:
        # The first event decides the status: engine errors before it keep their status.
        first = await upstream.next()
    except BaseException as exc:
        await upstream.close()
        if isinstance(exc, Exception):
            return _error(request, exc)
        raise

    async def lines() -> AsyncGenerator[bytes, None]:
        try:
            batch = [first]
            while batch:
                out = b"".join(_line(c) for e in batch if e is not _END for c in on_event(e))
                if out:
                    yield out
                batch = [] if batch[-1] is _END else await upstream.batch()
            for chunk in translator.flush(time.time()):
                yield _line(chunk)
            yield _line(translator.final(finish(), time.time()))
        except Exception as exc:  # the status is sent: the error is the stream's last line
            try:
                message = _refusal(exc).message
            except Exception:
                log.exception("%s stream failed", route)
                message = "internal error while streaming; see the server log"
            yield _line({"error": message})
        finally:
            await upstream.close()  # also when the client went away: ends the upstream request

    return ProxyStream(
        lines(), status_code=200, headers={"Content-Type": NDJSON}, on_close=upstream.close
    )


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    return await generation(request, kind="chat")


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    return await generation(request, kind="generate")


# --- embeddings ---------------------------------------------------------------------------


def _require_embedding(card: ServedModel, name: str) -> None:
    if "embedding" not in card.capabilities:
        raise _Refused(
            400,
            f'"{name}" does not support embeddings: use an embedding model '
            "(served with vLLM's --runner pooling)",
        )


@router.post("/api/embed")
async def embed(request: Request) -> Response:
    start = time.perf_counter_ns()
    try:
        body = await _body(request)
        name = model_name(body)
        card = _resolve(request, name)
        _require_embedding(card, name)
        if not to_openai.embed_inputs(body):  # Ollama answers an empty input without work
            call = None
        else:
            call = _with_priority(request, to_openai.embed_request(body))
        answer: Any = {}
        sent = time.perf_counter_ns()
        if call is not None:
            answer = await _pool(request).post_json(
                card, call.path, call.body, headers=_upstream_headers(request)
            )
    except Exception as exc:
        return _error(request, exc)
    prompt = to_ollama.embed_usage(answer)
    _record_usage(request, card.id, prompt, 0)
    now = time.perf_counter_ns()
    timings = Timings(total_ns=now - start, load_ns=sent - start, prompt_eval_ns=now - sent)
    return JSONResponse(to_ollama.embed_response(answer, name, timings))


@router.post("/api/embeddings")
async def embeddings(request: Request) -> Response:
    try:
        body = await _body(request)
        name = model_name(body)
        card = _resolve(request, name)
        _require_embedding(card, name)
        call = _with_priority(request, to_openai.embeddings_request(body))
        if not opt_str(body, "prompt"):
            return JSONResponse({"embedding": []})
        answer = await _pool(request).post_json(
            card, call.path, call.body, headers=_upstream_headers(request)
        )
    except Exception as exc:
        return _error(request, exc)
    _record_usage(request, card.id, to_ollama.embed_usage(answer), 0)
    return JSONResponse(to_ollama.embeddings_response(answer))


# --- models -------------------------------------------------------------------------------


async def _facts(request: Request, card: ServedModel) -> ModelFiles:
    """What the model's files say (cached; read off the event loop the first time)."""
    cache_dir = request.app.state.settings.cache_dir
    return await run_in_threadpool(read_model_files, card.root, cache_dir)


def _names(request: Request, card: ServedModel) -> list[str]:
    """The engine's id and every configured alias that points at it."""
    aliases = request.app.state.settings.aliases
    return [card.id, *sorted(a for a, target in aliases.items() if target == card.id)]


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(request: Request) -> Response:
    entries: list[dict[str, Any]] = []
    for card in _pool(request).models():
        facts = await _facts(request, card)
        entries.extend(model_cards.tags_entry(card, facts, n) for n in _names(request, card))
    return JSONResponse({"models": entries})


@router.get("/api/ps")
async def ps(request: Request) -> Response:
    entries: list[dict[str, Any]] = []
    for card in _pool(request).models():
        facts = await _facts(request, card)
        entries.append(model_cards.ps_entry(card, facts, card.id))
    return JSONResponse({"models": entries})


@router.post("/api/show")
async def show(request: Request) -> Response:
    try:
        body = await _body(request)
        name = model_name(body, legacy_name=True)
        card = _resolve(request, name)
    except Exception as exc:
        return _error(request, exc)
    facts = await _facts(request, card)
    return JSONResponse(model_cards.show_response(card, facts, name))


# --- model management: what a running vLLM can and cannot do -------------------------------


def _store(request: Request) -> ModelStore | None:
    return getattr(request.app.state, "model_store", None)


def _is_served(request: Request, name: str) -> bool:
    try:
        _pool(request).resolve(name)
    except UpstreamError:
        return False
    return True


_PULL_STEPS = ("pulling manifest", "verifying sha256 digest", "writing manifest", "success")


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    try:
        body = await _body(request)
        name = model_name(body, legacy_name=True)
    except Exception as exc:
        return _error(request, exc)
    stream = body.get("stream") is not False
    store = _store(request)
    if _is_served(request, name):  # already there: the progress of a pull with nothing to do
        if not stream:
            return JSONResponse({"status": "success"})
        return StreamingResponse(
            iter([_line({"status": step}) for step in _PULL_STEPS]), media_type=NDJSON
        )
    if store is None:
        return _error(
            request,
            _Refused(
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
                    return _error(request, _Refused(500, str(last["error"])))
        except Exception as exc:
            return _error(request, _Refused(500, f"pull failed: {exc}"))
        return JSONResponse(last or {"status": "success"})

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for item in progress:
                yield _line(item)
        except Exception as exc:
            yield _line({"error": f"pull failed: {exc}"})

    return StreamingResponse(lines(), media_type=NDJSON)


@router.post("/api/push")
async def push(request: Request) -> Response:
    return _error(
        request,
        _Refused(
            400,
            "vllama does not push models: vLLM serves Hugging Face models; upload them with "
            "`huggingface-cli upload` instead",
        ),
    )


@router.post("/api/create")
async def create(request: Request) -> Response:
    return _error(
        request,
        _Refused(
            400,
            "vllama does not create models from Modelfiles: give the model a name with an "
            "alias in vllama.toml ([aliases]) and change its sampling defaults with vLLM's "
            "--override-generation-config",
        ),
    )


@router.post("/api/copy")
async def copy(request: Request) -> Response:
    """A copy of a served model is an alias (in memory, until restart)."""
    try:
        body = await _body(request)
        source = opt_str(body, "source")
        destination = opt_str(body, "destination")
        if not source or not destination:
            raise TranslationError("source and destination are required", "source")
        card = _pool(request).resolve(source)
    except UpstreamError:
        return _error(request, _Refused(404, f'model "{source}" not found'))
    except Exception as exc:
        return _error(request, exc)
    settings = request.app.state.settings
    alias = destination[: -len(":latest")] if destination.endswith(":latest") else destination
    settings.aliases = {**settings.aliases, alias: card.id}
    return Response(status_code=200)


@router.delete("/api/delete")
async def delete(request: Request) -> Response:
    try:
        body = await _body(request)
        name = model_name(body, legacy_name=True)
    except Exception as exc:
        return _error(request, exc)
    settings = request.app.state.settings
    alias = name[: -len(":latest")] if name.endswith(":latest") else name
    if alias in settings.aliases:  # an alias (from config or /api/copy): forget it
        settings.aliases = {k: v for k, v in settings.aliases.items() if k != alias}
        return Response(status_code=200)
    if _is_served(request, name):
        return _error(
            request,
            _Refused(
                409,
                f"model '{name}' is being served by a running engine: stop that engine "
                f"first, then remove the files with `vllama rm {name}`",
            ),
        )
    store = _store(request)
    if store is not None and await store.delete(name):
        return Response(status_code=200)
    return _error(request, _Refused(404, f"model '{name}' not found"))


@router.head("/api/blobs/{digest}")
async def blob_exists(digest: str) -> Response:
    return Response(status_code=404)  # vllama keeps no Ollama blobs


@router.post("/api/blobs/{digest}")
async def blob_upload(request: Request, digest: str) -> Response:
    return _error(
        request,
        _Refused(
            400,
            f"vllama does not store blobs ({digest}): vLLM loads Hugging Face models; put the "
            "model directory on the server and start an engine for it with `vllama serve "
            "--model PATH`",
        ),
    )
