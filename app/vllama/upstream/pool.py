"""EnginePool: which engine serves which model, and every request to them.

Discovery (`GET /v1/models` at start, periodically, and when an unknown name is asked
for), a health loop (`GET /health`, and `/metrics` of engines with replicas: their load),
a circuit breaker per engine (a failure rate over a window, see breaker.py), a choice
among replicas by their live load and the conversation's prefix (balancer.py), retries of
requests that never reached an engine, and early exits that close the upstream
connection so vLLM aborts the request.

Retries, before any byte of an answer came back:

- The engine closed or reset the connection (aiohttp's ServerDisconnectedError, a reset):
  usually a pooled keep-alive connection the engine closed for idleness just as it was
  reused (vLLM closes idle connections after VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s). Retried
  once on a fresh connection to the same engine, and not held against the engine unless
  that fails too.
- The connection could not be made (refused, connect timeout): counted against the
  engine and retried on another replica (or the same one) up to `retries` times.

Client-facing messages never carry engine URLs or engine error text beyond a short,
single-line validation message (errors.safe_engine_message); the log has the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from vllama import fastjson
from vllama.config import EngineConfig, Settings
from vllama.names import library_target, strip_latest
from vllama.upstream import capabilities, discovery
from vllama.upstream.aliases import Aliases
from vllama.upstream.balancer import EngineLoad, make_balancer
from vllama.upstream.breaker import BreakerState, CircuitBreaker
from vllama.upstream.client import MAX_ERROR_BODY, error_message, make_session
from vllama.upstream.errors import (
    EngineConnectionError,
    EngineHTTPError,
    ModelNotFound,
    NoHealthyEngine,
    UpstreamError,
    safe_engine_message,
)
from vllama.upstream.load import LoadSample, fetch_load, smoothed
from vllama.upstream.loader import EngineLoader, LoadState
from vllama.upstream.sse import SSEDecoder

log = logging.getLogger(__name__)

# Rediscover every engine's models every this many health rounds (and on demand).
_REDISCOVER_ROUNDS = 15
_ON_DEMAND_MIN_S = 1.0  # an unknown model name triggers at most one refresh a second
# The connection could not be made: nothing reached the engine.
_CONNECT_FAILED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
# The engine closed or reset the connection before answering: on a pooled connection,
# the keep-alive race; retried once on a fresh connection.
_DROPPED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


# config.json of the model an engine loaded from `root` (a path or a repo id), or None.
# The pool reads no files itself: create_app passes models.info's reader in.
ModelConfigReader = Callable[[str | None], dict[str, Any] | None]


class EngineMetrics(Protocol):
    """What the pool reports (observability.metrics.Metrics has these)."""

    def upstream_error(self, engine: str, kind: str) -> None: ...
    def upstream_retry(self, engine: str, reason: str) -> None: ...
    def set_engine_up(self, engine: str, up: bool) -> None: ...
    def set_breaker_state(self, engine: str, state: int) -> None: ...


@dataclass(frozen=True)
class ServedModel:
    id: str  # the engine's model id, e.g. "vllama-demo"
    engine_urls: tuple[str, ...]  # engines serving it (replicas)
    max_model_len: int | None
    root: str | None  # what vLLM loaded (local path or repo id), from /v1/models
    created: int  # unix seconds
    capabilities: frozenset[str]


class UpstreamResponse:
    """A raw engine response for pass-through: status, headers, and `read()`: every body
    byte that arrived since the last read (waits for some), b"" at the end."""

    __slots__ = ("engine", "headers", "read", "status")

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        engine: str,
        read: Callable[[], Awaitable[bytes]],
    ) -> None:
        self.status = status
        self.headers = headers
        self.engine = engine
        self.read = read


class Engine:
    """One engine's live state."""

    def __init__(self, config: EngineConfig, breaker: CircuitBreaker) -> None:
        self.config = config
        self.url = config.url
        self.breaker = breaker
        self.cards: list[discovery.ModelCard] | None = None  # None: never discovered
        self.healthy = False
        self.late_checks = 0  # health checks in a row that timed out while healthy
        self.outstanding = 0
        self.load: EngineLoad | None = None  # its own figures, when it has replicas
        self.kind: str | None = None  # "completion"/"embedding" once known
        # What the probes found (None: not probed since the engine last came up).
        self.detected: capabilities.Detected | None = None
        # Whether its answers carry vLLM's per-request timings (--enable-per-request-
        # metrics), as its last generation said; None: not known since it came up.
        self.reports_timings: bool | None = None

    @property
    def wants_probe(self) -> bool:
        """Capabilities not given in the config, and not all known yet."""
        declared = self.config.capabilities is not None
        return not declared and (self.detected is None or not self.detected.complete)

    def capabilities(self, card: discovery.ModelCard) -> frozenset[str]:
        caps: set[str] = set(self.config.capabilities or ())
        if self.config.capabilities is None and self.detected is not None:
            caps |= self.detected.capabilities
        if not caps & {"completion", "embedding"}:
            caps.add(card.kind or self.kind or "completion")
        return frozenset(caps)


class EnginePool:
    def __init__(
        self,
        settings: Settings,
        metrics: EngineMetrics | None = None,
        *,
        model_config: ModelConfigReader | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._model_config = model_config  # None: kinds come from the engines alone
        # Configured, plus /api/copy's at runtime (bounded by max_aliases).
        self.aliases = Aliases(settings.aliases, limit=settings.max_aliases)
        self._engines = [self._engine(cfg) for cfg in settings.engines]
        self._by_url = {e.url: e for e in self._engines}
        self._balancer = make_balancer(
            settings.balancer,
            affinity_slack=settings.affinity_slack,
            prefix_affinity=settings.prefix_affinity,
        )
        self._replicated: set[str] = set()  # engines serving a model another one serves too
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None  # retries: never a reused connection
        self._served: dict[str, ServedModel] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._last_refresh = 0.0
        # On-demand engines (set by `vllama serve`): engines it adds come and go; the
        # configured ones are fixed.
        self.loader: EngineLoader | None = None
        self._rebuild()

    def _engine(self, cfg: EngineConfig) -> Engine:
        def changed(state: BreakerState) -> None:
            if state is BreakerState.OPEN:
                log.warning("engine %s taken out: circuit breaker open", cfg.url)
            if self._metrics is not None:
                self._metrics.set_breaker_state(cfg.url, int(state))

        s = self._settings
        breaker = CircuitBreaker(
            failure_rate=s.breaker_failure_rate,
            min_calls=s.breaker_min_calls,
            window_s=s.breaker_window_s,
            reset_s=s.breaker_reset_s,
            on_change=changed,
        )
        return Engine(cfg, breaker)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._session = make_session(self._settings)
        self._fresh = make_session(self._settings, fresh_connections=True)
        for e in self._engines:
            if self._metrics is not None:
                self._metrics.set_engine_up(e.url, False)
                self._metrics.set_breaker_state(e.url, int(BreakerState.CLOSED))
        await asyncio.gather(*(self._check(e, rediscover=True) for e in self._engines))
        self._loop_task = asyncio.create_task(self._health_loop(), name="vllama-health")

    async def close(self) -> None:
        for task in (self._loop_task, self._refresh_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()
        self._session = self._fresh = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("EnginePool.start() was not awaited")
        return self._session

    # --- what is served -----------------------------------------------------------------

    def engines(self) -> list[Engine]:
        return list(self._engines)

    def models(self) -> list[ServedModel]:
        """Models of healthy engines, deduplicated by id."""
        healthy = {e.url for e in self._engines if e.healthy}
        return [m for m in self._served.values() if healthy.intersection(m.engine_urls)]

    def all_models(self) -> list[ServedModel]:
        """Every model any engine was seen to serve, healthy or not."""
        return list(self._served.values())

    async def add_engine(self, config: EngineConfig) -> None:
        """Route to one more engine (an on-demand one, now healthy): discovered at once."""
        engine = self._engine(config)
        self._engines = [e for e in self._engines if e.url != config.url] + [engine]
        self._by_url[engine.url] = engine
        if self._metrics is not None:
            self._metrics.set_breaker_state(engine.url, int(BreakerState.CLOSED))
        await self._check(engine, rediscover=True)

    def remove_engine(self, url: str) -> None:
        """Stop routing to an engine (it is being stopped or put to sleep)."""
        self._engines = [e for e in self._engines if e.url != url]
        if self._by_url.pop(url, None) is not None:
            if self._metrics is not None:
                self._metrics.set_engine_up(url, False)
            self._rebuild()

    async def acquire(self, name: str, keep_alive: float | None = None) -> ServedModel:
        """The served model for `name`; a pulled model without an engine gets one first
        (the caller waits for it: that wait is Ollama's load_duration). `keep_alive` is
        the request's (seconds; None: the default), for engines the loader manages."""
        try:
            model = self.resolve(name)
        except (ModelNotFound, NoHealthyEngine):
            if self.loader is None:
                raise
            model_id = await self.loader.find(self.aliases.resolve(name))
            if model_id is None:
                raise
            await self.loader.load(model_id)
            model = self.resolve(model_id)
        if self.loader is not None:
            self.loader.touch(model.id, keep_alive)
        return model

    async def unload(self, name: str) -> bool:
        """Unload the on-demand model `name` now (keep_alive 0). True when the loader knows
        the model (loaded or not); False for a name it does not manage."""
        if self.loader is None:
            return False
        model_id = await self.loader.find(self.aliases.resolve(name))
        if model_id is None:
            return False
        await self.loader.unload(model_id)
        return True

    def load_state(self, model: ServedModel) -> LoadState | None:
        """An on-demand model's expiry and memory (None for fixed engines)."""
        if self.loader is None:
            return None
        for url in model.engine_urls:
            state = self.loader.state(url)
            if state is not None:
                return state
        return None

    async def offline_models(self) -> list[ServedModel]:
        """Pulled models without an engine now, which a request would load."""
        if self.loader is None:
            return []
        served = set(self._served)
        return [c for c in await self.loader.offline_cards() if c.id not in served]

    async def describe(self, name: str) -> ServedModel:
        """The model `name` names, served or only pulled (for /api/show, /api/copy)."""
        try:
            return self.resolve(name)
        except (ModelNotFound, NoHealthyEngine):
            if self.loader is None:
                raise
            model_id = await self.loader.find(self.aliases.resolve(name))
            for card in await self.loader.offline_cards() if model_id else ():
                if card.id == model_id:
                    return card
            raise

    def possibly_served(self) -> tuple[set[str], list[str]]:
        """What any configured engine may be serving, reachable or not: model ids, aliases
        of them, and what the engines load (discovered roots, configured sources); and the
        engines that cannot tell (never discovered, nothing configured about their files).

        Deleting files must consult this, never only the live engine list: an engine that
        is down right now still serves its files when it comes back.
        """
        names: set[str] = set()
        unknown: list[str] = []
        for e in self._engines:
            names.update(e.config.models)
            if e.config.source:
                names.add(e.config.source)
            if e.cards is not None:
                for card in e.cards:
                    names.add(card.id)
                    if card.root:
                        names.add(card.root)
            elif not e.config.source:
                unknown.append(e.url)
        names.update(alias for alias, target in self.aliases.items() if target in names)
        return names, unknown

    def resolve(self, name: str) -> ServedModel:
        target = self.aliases.resolve(name)
        # A configured or copied alias, the name as served, then Ollama's library name.
        for candidate in (target, strip_latest(target), library_target(name)):
            if candidate in self._served:
                return self._served[candidate]
        self.request_refresh()
        unknown = [e.url for e in self._engines if e.cards is None]
        if unknown:
            # Unreachable engines may serve it: that is an outage, not a missing model.
            log.warning(
                "model %r asked for while engine(s) %s are unreachable", name, ", ".join(unknown)
            )
            raise NoHealthyEngine(
                name,
                "an engine that may serve it is unreachable; retry shortly, or tell the "
                "operator if it persists",
                retry_after=self._retry_after(),
            )
        raise ModelNotFound(name)

    def _rebuild(self) -> None:
        served: dict[str, ServedModel] = {}
        for e in self._engines:
            cards = e.cards
            if cards is None and e.config.models:  # configured but not discovered yet
                cards = [discovery.ModelCard(m, None, None, 0, None) for m in e.config.models]
            for card in cards or ():
                known = served.get(card.id)
                if known is None:
                    served[card.id] = ServedModel(
                        id=card.id,
                        engine_urls=(e.url,),
                        max_model_len=card.max_model_len,
                        root=card.root,
                        created=card.created,
                        capabilities=e.capabilities(card),
                    )
                elif e.url not in known.engine_urls:
                    served[card.id] = ServedModel(
                        id=known.id,
                        engine_urls=(*known.engine_urls, e.url),
                        max_model_len=known.max_model_len or card.max_model_len,
                        root=known.root or card.root,
                        created=known.created or card.created,
                        capabilities=known.capabilities | e.capabilities(card),
                    )
        self._served = served
        self._replicated = {
            u for m in served.values() if len(m.engine_urls) > 1 for u in m.engine_urls
        }

    # --- discovery and health -----------------------------------------------------------

    def request_refresh(self) -> None:
        """Rediscover every engine soon (at most once a second), without waiting."""
        now = time.monotonic()
        if now - self._last_refresh < _ON_DEMAND_MIN_S or self._session is None:
            return
        if self._refresh_task is not None and not self._refresh_task.done():
            return
        self._last_refresh = now
        self._refresh_task = asyncio.create_task(self.refresh(), name="vllama-refresh")

    async def refresh(self) -> None:
        """Rediscover every engine now."""
        await asyncio.gather(*(self._check(e, rediscover=True) for e in self._engines))

    async def _health_loop(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(self._settings.health_interval_s)
            rounds += 1
            rediscover = rounds % _REDISCOVER_ROUNDS == 0
            try:
                await asyncio.gather(
                    *(self._check(e, rediscover=rediscover) for e in self._engines)
                )
            except Exception:  # never let the loop die; the next round tries again
                log.exception("health check round failed")

    async def _check(self, engine: Engine, *, rediscover: bool) -> None:
        settings = self._settings
        timeout = aiohttp.ClientTimeout(
            total=max(settings.connect_timeout_s, settings.health_timeout_s)
        )
        was_healthy = engine.healthy
        late = False
        try:
            async with self.session.get(
                f"{engine.url}/health", headers=self._auth(engine), timeout=timeout
            ) as resp:
                await resp.read()
                ok = resp.status == 200
        except asyncio.TimeoutError:  # aiohttp's own timeouts are this too
            ok, late = False, True
        except aiohttp.ClientError:
            ok = False
        if late and was_healthy:
            engine.late_checks += 1
            if engine.late_checks < settings.health_timeouts_to_fail:
                log.info(
                    "engine %s answered no health check for %d round(s); kept in",
                    engine.url,
                    engine.late_checks,
                )
                return
        engine.late_checks = 0
        engine.healthy = ok
        if self._metrics is not None:
            self._metrics.set_engine_up(engine.url, ok)
        if not ok:
            engine.breaker.record_failure()
            if was_healthy:
                log.warning("engine %s failed its health check", engine.url)
                engine.detected = None  # it may come back with other flags: probe again
                engine.reports_timings = None
            return
        if engine.breaker.state is BreakerState.HALF_OPEN:
            # Health-checked back in. A passing health check is not a served request: in
            # the closed state it would dilute the failure rate of the requests it serves.
            engine.breaker.record_success()
        if rediscover or not was_healthy or engine.cards is None:
            await self._discover(engine)
        if self._settings.balancer == "load" and engine.url in self._replicated:
            await self._poll_load(engine, timeout)

    async def _poll_load(self, engine: Engine, timeout: aiohttp.ClientTimeout) -> None:
        """The engine's own load (upstream/load.py), for choosing among replicas."""
        outstanding = engine.outstanding
        sample = await fetch_load(self.session, engine.url, self._auth(engine), timeout)
        if sample is None:
            return  # the last figures age out (balancer.STALE_AFTER_S)
        now = time.monotonic()
        last = engine.load
        if last is not None:
            previous = LoadSample(last.running, last.waiting, last.kv_usage)
            sample = smoothed(sample, previous, now - last.at)
        engine.load = EngineLoad(sample.running, sample.waiting, sample.kv_usage, now, outstanding)

    async def _discover(self, engine: Engine) -> None:
        timeout = max(self._settings.connect_timeout_s, 5.0)
        try:
            cards = await discovery.fetch_models(self.session, engine.config, timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            log.warning("discovery of %s failed: %s", engine.url, exc)
            return
        if engine.kind is None:
            engine.kind = await discovery.probe_kind(self.session, engine.config, timeout)
        if engine.kind is None and self._model_config is not None:
            cards = [
                discovery.ModelCard(
                    c.id,
                    c.max_model_len,
                    c.root,
                    c.created,
                    discovery.kind_from_architectures(
                        await asyncio.to_thread(self._model_config, c.root)
                    ),
                )
                for c in cards
            ]
        if engine.kind != "embedding" and cards and engine.wants_probe:
            engine.detected = await capabilities.detect(
                self.session, engine.url, cards[0].id, self._auth(engine), timeout
            )
            log.info(
                "engine %s capabilities detected: %s",
                engine.url,
                ", ".join(sorted(engine.detected.capabilities)) or "none beyond completion",
            )
        engine.cards = cards
        self._rebuild()

    # --- requests -----------------------------------------------------------------------

    def _auth(self, engine: Engine) -> dict[str, str]:
        key = engine.config.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _choose(
        self, name: str, urls: tuple[str, ...], tried: set[str], affinity: bytes | None = None
    ) -> Engine:
        replicas = [self._by_url[u] for u in urls if u in self._by_url]
        fresh = [e for e in replicas if e.url not in tried and e.breaker.available()]
        # Health results may be a round old: prefer engines that passed, else try the rest.
        candidates = [e for e in fresh if e.healthy] or fresh
        if not candidates and tried:  # every replica failed once: retry among them
            candidates = [e for e in replicas if e.breaker.available()]
        engine = self._balancer.pick(candidates, affinity)
        if engine is None:
            log.warning(
                "no engine available for model %r: %s down or taken out by their breakers",
                name,
                ", ".join(urls) or "none configured",
            )
            raise NoHealthyEngine(
                name,
                "its engines are down or were taken out after failures; retry shortly",
                retry_after=self._retry_after(),
            )
        engine.breaker.acquire()
        return engine

    def _reachable(self, model: ServedModel) -> bool:
        return any(url in self._by_url for url in model.engine_urls)

    def _take(self, engine: Engine) -> None:
        engine.outstanding += 1
        if engine.outstanding == 1 and self.loader is not None:
            self.loader.busy(engine.url)

    def _give(self, engine: Engine) -> None:
        engine.outstanding -= 1
        if engine.outstanding == 0 and self.loader is not None:
            self.loader.idle(engine.url)

    def _retry_after(self) -> int:
        """Seconds until an open breaker lets a trial through (what a client should wait)."""
        return max(1, math.ceil(self._settings.breaker_reset_s))

    def _failed(self, engine: Engine, kind: str, cause: str) -> None:
        # Each failure counts towards the breaker; the log says which kind it was and why,
        # since "circuit breaker open" alone does not tell an operator what to fix.
        log.warning("request to engine %s failed (%s): %s", engine.url, kind, cause)
        engine.breaker.record_failure()
        if self._metrics is not None:
            self._metrics.upstream_error(engine.url, kind)

    async def _send(
        self, engine: Engine, method: str, path: str, data: bytes, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        """One request to `engine`; a connection the engine dropped before answering is
        retried once on a fresh connection (the keep-alive race), not counted against it."""
        url = engine.url + path
        hdrs = {**headers, **self._auth(engine)}
        try:
            return await self.session.request(method, url, data=data, headers=hdrs)
        except _DROPPED as exc:
            if isinstance(exc, aiohttp.ClientConnectorError):
                raise
            log.info("engine %s dropped a connection (%r); retrying on a fresh one", url, exc)
            if self._metrics is not None:
                self._metrics.upstream_retry(engine.url, "dropped_connection")
        fresh = self._fresh if self._fresh is not None else self.session
        return await fresh.request(method, url, data=data, headers=hdrs)

    @contextlib.asynccontextmanager
    async def _open(
        self,
        model: ServedModel | None,
        method: str,
        path: str,
        data: bytes,
        headers: Mapping[str, str] | None,
        affinity: bytes | None = None,
    ) -> AsyncIterator[tuple[_Call, aiohttp.ClientResponse]]:
        if model is not None and self.loader is not None and not self._reachable(model):
            # Its on-demand engine was unloaded since the model was resolved: load again.
            await self.loader.load(model.id)
            model = self.resolve(model.id)
        name = model.id if model is not None else "*"
        urls = model.engine_urls if model is not None else tuple(self._by_url)
        tried: set[str] = set()
        last: Exception | None = None
        for _attempt in range(self._settings.retries + 1):
            try:
                engine = self._choose(name, urls, tried, affinity)
            except NoHealthyEngine:
                if last is None:
                    raise
                break
            self._take(engine)
            try:
                resp = await self._send(engine, method, path, data, headers or {})
            except (*_CONNECT_FAILED, *_DROPPED) as exc:  # nothing came back: try again
                self._give(engine)
                kind = "timeout" if isinstance(exc, aiohttp.ConnectionTimeoutError) else "connect"
                self._failed(engine, kind, repr(exc))
                if self._metrics is not None and _attempt < self._settings.retries:
                    self._metrics.upstream_retry(engine.url, kind)
                tried.add(engine.url)
                last = exc
                continue
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self._give(engine)
                timeout = isinstance(exc, asyncio.TimeoutError)
                kind = "timeout" if timeout else "protocol"
                self._failed(engine, kind, repr(exc))
                raise EngineConnectionError(
                    _NO_ANSWER, kind=kind, status=504 if timeout else 502
                ) from exc
            except BaseException:
                self._give(engine)
                raise
            call = _Call(self, engine)
            try:
                if resp.status >= 500:
                    call.fail("http_5xx", f"the engine answered HTTP {resp.status}")
                elif resp.status >= 400 and self._metrics is not None:
                    self._metrics.upstream_error(engine.url, "http_4xx")
                yield call, resp
            finally:
                self._give(engine)
                if not call.failed:
                    engine.breaker.record_success()
                if resp.content.is_eof():
                    resp.release()
                else:  # left early: closing the connection makes vLLM abort the request
                    resp.close()
                    if self._metrics is not None:
                        self._metrics.upstream_error(engine.url, "cancelled")
            return
        log.warning("no engine answered for model %r: %r", name, last)
        raise EngineConnectionError(
            f"the engine of model '{name}' could not be reached; retry shortly, or tell the "
            "operator if it persists",
            kind="timeout" if isinstance(last, aiohttp.ConnectionTimeoutError) else "connect",
            retry_after=self._retry_after(),
        )

    async def _error(self, call: _Call, resp: aiohttp.ClientResponse) -> EngineHTTPError:
        """The engine's error answer as an error safe to show the client (logged whole)."""
        raw = await _read(call, resp, MAX_ERROR_BODY)
        text = error_message(resp.status, raw)
        log.warning("engine %s answered HTTP %d: %s", call.engine.url, resp.status, text[:2000])
        message, param = safe_engine_message(resp.status, text)
        return EngineHTTPError(resp.status, message, param=param)

    async def _encode(
        self, model: ServedModel, body: dict[str, Any], large: bool, **extra: Any
    ) -> bytes:
        """The upstream body; a large one is encoded in a worker thread (event loop free)."""
        if large:
            return await asyncio.to_thread(self._json_body, model, body, **extra)
        return self._json_body(model, body, **extra)

    def _json_body(self, model: ServedModel, body: dict[str, Any], **extra: Any) -> bytes:
        return fastjson.dumps({**body, "model": model.id, **extra})

    @staticmethod
    def _headers(headers: Mapping[str, str] | None) -> dict[str, str]:
        return {**(headers or {}), "Content-Type": "application/json"}

    async def _answer_object(
        self,
        model: ServedModel,
        path: str,
        data: bytes,
        headers: Mapping[str, str] | None,
        affinity: bytes | None,
    ) -> tuple[dict[str, Any], _Call]:
        """A POST answered with one JSON object (an engine's error raised as UpstreamError)."""
        opened = self._open(model, "POST", path, data, self._headers(headers), affinity)
        async with opened as (call, resp):
            if resp.status >= 400:
                raise await self._error(call, resp)
            raw = await _read(call, resp)
            try:
                answer = fastjson.loads(raw)
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                call.fail("protocol", f"answered {path} with something not a JSON object")
                raise UpstreamError("the model's engine sent an answer that is not JSON")
        return answer, call

    async def post_json(
        self,
        model: ServedModel,
        path: str,
        body: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        large: bool = False,
        affinity: bytes | None = None,
    ) -> dict[str, Any]:
        data = await self._encode(model, body, large)
        answer, _ = await self._answer_object(model, path, data, headers, affinity)
        return answer

    def reports_timings(self, model: ServedModel) -> bool:
        """Whether every engine of `model` answered its last generation with vLLM's
        per-request timings: a whole (not streamed) answer then still says how long the
        generation took."""
        engines = [self._by_url.get(u) for u in model.engine_urls]
        return bool(engines) and all(e is not None and e.reports_timings for e in engines)

    async def generate_whole(
        self,
        model: ServedModel,
        path: str,
        body: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        large: bool = False,
        affinity: bytes | None = None,
    ) -> tuple[dict[str, Any], float | None]:
        """A generation answered whole, and its generation time (first to last token, as
        the engine measured it; None if the answer did not say)."""
        data = await self._encode(model, body, large, stream=False)
        answer, call = await self._answer_object(model, path, data, headers, affinity)
        seconds = generation_seconds(answer)
        call.engine.reports_timings = seconds is not None
        return answer, seconds

    @contextlib.asynccontextmanager
    async def stream_batches(
        self,
        model: ServedModel,
        path: str,
        body: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        large: bool = False,
        affinity: bytes | None = None,
    ) -> AsyncIterator[AsyncIterator[list[dict[str, Any]]]]:
        """A streamed answer's events, as the network delivers them: each item holds every
        event one read completed (one or many), so a caller can handle them in one pass.
        `affinity`: the conversation's key (balancer.affinity_key), for prefix affinity."""
        data = await self._encode(model, body, large, stream=True)
        opened = self._open(model, "POST", path, data, self._headers(headers), affinity)
        async with opened as (call, resp):
            if resp.status >= 400:
                raise await self._error(call, resp)
            batches = _event_batches(call, resp)
            try:
                yield batches
            finally:
                await batches.aclose()

    @contextlib.asynccontextmanager
    async def stream_events(
        self,
        model: ServedModel,
        path: str,
        body: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        large: bool = False,
        affinity: bytes | None = None,
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """A streamed answer's events, one by one. `affinity`: the conversation's key
        (balancer.affinity_key), for prefix affinity."""
        streamed = self.stream_batches(
            model, path, body, headers=headers, large=large, affinity=affinity
        )
        async with streamed as batches:
            events = _flatten(batches)
            try:
                yield events
            finally:
                await events.aclose()

    @contextlib.asynccontextmanager
    async def forward(
        self,
        model: ServedModel | None,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        affinity: bytes | None = None,
    ) -> AsyncIterator[UpstreamResponse]:
        async with self._open(model, method, path, body, headers, affinity) as (call, resp):
            if resp.status >= 400:  # never the engine's own error text: a safe message
                raise await self._error(call, resp)
            content = resp.content

            async def read() -> bytes:
                try:
                    return await content.readany()
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    raise call.lost(exc) from exc

            yield UpstreamResponse(resp.status, resp.headers, call.engine.url, read)


_NO_ANSWER = "the model's engine stopped answering; retry, or tell the operator if it persists"


class _Call:
    """One request to one engine: failures seen while reading its answer count once
    against the engine's breaker (a hung engine's read timeout included)."""

    __slots__ = ("engine", "failed", "pool")

    def __init__(self, pool: EnginePool, engine: Engine) -> None:
        self.pool = pool
        self.engine = engine
        self.failed = False

    def fail(self, kind: str, cause: str) -> None:
        if not self.failed:
            self.failed = True
            self.pool._failed(self.engine, kind, cause)

    def lost(self, exc: BaseException) -> EngineConnectionError:
        timeout = isinstance(exc, asyncio.TimeoutError)
        kind = "timeout" if timeout else "connect"
        self.fail(kind, f"connection lost mid-response: {exc!r}")
        return EngineConnectionError(_NO_ANSWER, kind=kind, status=504 if timeout else 502)


async def _read(call: _Call, resp: aiohttp.ClientResponse, limit: int | None = None) -> bytes:
    try:
        return await (resp.content.read(limit) if limit else resp.read())
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise call.lost(exc) from exc


async def _event_batches(
    call: _Call, resp: aiohttp.ClientResponse
) -> AsyncGenerator[list[dict[str, Any]], None]:
    decoder = SSEDecoder()
    content = resp.content
    try:
        while chunk := await content.readany():
            batch: list[dict[str, Any]] = []
            for data in decoder.feed(chunk):
                if data == b"[DONE]":
                    if batch:
                        yield batch
                    await _read(call, resp, MAX_ERROR_BODY)  # the chunked terminator: reusable
                    return
                try:
                    batch.append(_event(call, data))
                except UpstreamError:
                    if batch:  # the events before the failure still go out first
                        yield batch
                    raise
            if batch:
                yield batch
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise call.lost(exc) from exc
    call.fail("protocol", "ended the stream before [DONE]")
    raise EngineConnectionError(_NO_ANSWER, status=502)


def _event(call: _Call, data: bytes) -> dict[str, Any]:
    """One SSE event's JSON object; an engine's error event raised as an EngineHTTPError."""
    try:
        event = fastjson.loads(data)
    except ValueError:
        call.fail("protocol", "sent an event that is not JSON")
        raise UpstreamError("the model's engine sent an event that is not JSON") from None
    if not isinstance(event, dict):
        call.fail("protocol", "sent an event that is not an object")
        raise UpstreamError("the model's engine sent an event that is not an object")
    if "usage" in event and not event.get("choices"):  # the final event: timings ride on it
        call.engine.reports_timings = generation_seconds(event) is not None
    err = event.get("error")
    if err is not None and "choices" not in event:
        text = err.get("message") if isinstance(err, dict) else str(err)
        code = err.get("code") if isinstance(err, dict) else None
        status = code if isinstance(code, int) and 400 <= code < 600 else 500
        log.warning("engine %s failed mid-stream (%d): %s", call.engine.url, status, text)
        message, param = safe_engine_message(status, str(text or ""))
        raise EngineHTTPError(status, message, param=param)
    return event


def generation_seconds(answer: dict[str, Any]) -> float | None:
    """vLLM's `metrics.generation_time_ms` (first to last token) in seconds, when the engine
    runs with --enable-per-request-metrics."""
    metrics = answer.get("metrics")
    ms = metrics.get("generation_time_ms") if isinstance(metrics, dict) else None
    if isinstance(ms, (int, float)) and not isinstance(ms, bool) and ms >= 0:
        return ms / 1000
    return None


async def _flatten(
    batches: AsyncIterator[list[dict[str, Any]]],
) -> AsyncGenerator[dict[str, Any], None]:
    async for batch in batches:
        for event in batch:
            yield event
