"""EngineScheduler: Ollama's model lifecycle for the engines `vllama serve` supervises.

- A request for a pulled (or configured) model with no engine starts one through the
  supervisor with the one engine command (engine/launch.py), and waits for it. Concurrent
  first requests share one start; loads run one at a time.
- keep_alive (the request's, else `settings.keep_alive`): when an engine's last request
  ends, a timer starts; at its end the engine is unloaded. 0 unloads as soon as it is
  idle, a negative value keeps it loaded. A new request stops the timer.
- Memory: each device (GPU, or the host on the CPU build) has a budget; an engine
  reserves what lifecycle.memory estimates for it. A model that does not fit first makes
  room by unloading the least recently used idle engines (sleeping ones first); when busy
  engines hold the memory it waits (`engine_wait_s`) for them to finish, then answers 503
  naming what is loaded and what is needed.
- Sleep mode (GPU builds with vLLM's sleep endpoints): unloading puts the engine to sleep
  (its GPU memory is freed, the process stays) and loading wakes it, seconds instead of a
  cold start. A sleeping engine still holds its overhead on the GPU and is stopped first
  when room is needed.

Engines the façade only fronts (`--engine URL`, compose, systemd) are not touched.
Everything runs on the event loop; process starts and stops run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from vllama.config import ModelLaunch, Settings
from vllama.engine.launch import (
    DEMO_CPU_FLAGS,
    EngineSpec,
    engine_spec,
    free_port,
    has_flag,
    with_defaults,
)
from vllama.lifecycle import sleep as sleep_mode
from vllama.lifecycle.catalog import Catalog, Loadable
from vllama.lifecycle.memory import (
    DEFAULT_OVERHEAD,
    Device,
    GiB,
    MemoryNeed,
    budget_bytes,
    choose_devices,
    estimate,
    gpu_memory_utilization,
    model_context,
)
from vllama.names import strip_latest
from vllama.units import format_duration, format_size, parse_size
from vllama.upstream.capabilities import vision_in_config
from vllama.upstream.errors import (
    EngineLoadFailed,
    ModelNotFound,
    ModelTooLarge,
    NotEnoughMemory,
)
from vllama.upstream.loader import LoaderMetrics, LoadState
from vllama.upstream.pool import ServedModel

if TYPE_CHECKING:
    from vllama.upstream.pool import EnginePool

log = logging.getLogger("vllama.lifecycle")

State = Literal["loading", "loaded", "sleeping", "stopping"]
_POLL_S = 0.25
# keep_alive 0 on a request that never reaches the engine (refused before it): unload
# after this instead of keeping the engine forever.
_ZERO_GRACE_S = 5.0


class Processes(Protocol):
    """What the scheduler needs of engine.supervisor.Supervisor."""

    def add(self, spec: EngineSpec) -> None: ...
    def remove(self, url: str) -> None: ...
    def status(self, url: str) -> tuple[bool, str | None]: ...
    def memory(self, url: str) -> int | None: ...
    def log_paths(self) -> dict[str, Path]: ...


@dataclass
class _Engine:
    model_id: str
    spec: EngineSpec
    need: MemoryNeed
    devices: tuple[int, ...]
    state: State
    keep_alive: float  # seconds; negative: forever
    last_used: float  # monotonic
    busy: bool = False
    timer: asyncio.TimerHandle | None = None
    expires_at: float | None = None  # unix seconds, while idle with a finite keep_alive
    can_sleep: bool = False

    @property
    def url(self) -> str:
        return self.spec.url

    def holds(self, device: int) -> int:
        """Bytes this engine holds on `device` now (a sleeping one: its overhead)."""
        if device not in self.devices:
            return 0
        return self.need.overhead if self.state == "sleeping" else self.need.per_device


@dataclass(frozen=True)
class Planned:
    """A preloaded engine (`vllama serve --model`), planned before the event loop runs."""

    loadable: Loadable
    spec: EngineSpec
    need: MemoryNeed
    devices: tuple[int, ...]


class EngineScheduler:
    def __init__(
        self,
        settings: Settings,
        processes: Processes,
        catalog: Catalog,
        *,
        cpu_build: bool,
        devices: Sequence[Device],
        free_memory: Callable[[], dict[int, int | None]],
        port_picker: Callable[[], int] = free_port,
    ) -> None:
        self.settings = settings
        self.processes = processes
        self.catalog = catalog
        self.cpu_build = cpu_build
        self.devices = list(devices)
        self._free_memory = free_memory
        self._port = port_picker
        self.gpu = bool(self.devices) and self.devices[0].kind == "gpu"
        self.sleep_wanted = settings.sleep_mode and self.gpu
        self.overhead = (
            parse_size(settings.engine_overhead)
            if settings.engine_overhead
            else DEFAULT_OVERHEAD["gpu" if self.gpu else "cpu"]
        )
        self._engines: dict[str, _Engine] = {}  # by model id
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()  # one load (and its evictions) at a time
        self._idle = asyncio.Event()  # set whenever an engine's last request ends
        self._pool: EnginePool | None = None
        self._metrics: LoaderMetrics | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- wiring ------------------------------------------------------------------------

    async def start(self, pool: EnginePool, metrics: LoaderMetrics | None = None) -> None:
        """Route to the preloaded engines (already healthy) and take requests' loads."""
        self._pool = pool
        self._metrics = metrics
        pool.loader = self
        for engine in list(self._engines.values()):
            await pool.add_engine(engine.spec.engine_config())
            engine.can_sleep = self.sleep_wanted and await sleep_mode.can_sleep(
                pool.session, engine.url
            )
            self._arm(engine)
        self._report()

    async def close(self) -> None:
        for engine in self._engines.values():
            self._cancel_timer(engine)
        for task in list(self._tasks):
            task.cancel()
        # The supervisor stops the processes (vllama serve's shutdown).

    @property
    def pool(self) -> EnginePool:
        if self._pool is None:
            raise RuntimeError("EngineScheduler.start() was not awaited")
        return self._pool

    # --- planning (pure apart from the memory probe) -----------------------------------

    def _engine_args(self, item: Loadable) -> list[str]:
        args = list(item.launch.engine_args)
        if item.demo and self.cpu_build:
            args = with_defaults(args, DEMO_CPU_FLAGS)
        return args

    def estimate(self, item: Loadable) -> MemoryNeed:
        files = item.files
        cpu_kv = os.environ.get("VLLM_CPU_KVCACHE_SPACE") if self.cpu_build else None
        return estimate(
            files.config or {},
            files_bytes=files.size_bytes or 0,
            parameter_count=files.parameter_count,
            engine_args=self._engine_args(item),
            context_length=self.settings.context_length,
            num_parallel=self.settings.num_parallel,
            overhead=self.overhead,
            device_total=self.devices[0].total if self.gpu else None,
            cpu_kv_space=int(cpu_kv) * GiB if cpu_kv and cpu_kv.isdigit() else None,
        )

    def _spec(self, item: Loadable, need: MemoryNeed, devices: tuple[int, ...]) -> EngineSpec:
        args = self._engine_args(item)
        own = model_context(item.files.config or {})
        if not has_flag(args, "--max-model-len") and own and own > self.settings.context_length:
            args += ["--max-model-len", str(self.settings.context_length)]
        if item.kind == "embedding" and not has_flag(args, "--runner"):
            args += ["--runner", "pooling"]
        if self.gpu and not has_flag(args, "--gpu-memory-utilization"):
            total = min(d.total for d in self.devices if d.index in devices)
            util = gpu_memory_utilization(need.per_device, total)
            args += ["--gpu-memory-utilization", f"{util:.2f}"]
        elif (
            self.cpu_build
            and need.kv_cache > 0
            and not has_flag(args, "--kv-cache-memory-bytes")
            and "VLLM_CPU_KVCACHE_SPACE" not in os.environ
        ):
            args += ["--kv-cache-memory-bytes", str(need.kv_cache)]
        launch = item.launch.model_copy(update={"engine_args": args})
        return engine_spec(
            launch,
            self.settings,
            launch.port or self._port(),
            cpu_build=self.cpu_build,
            demo=item.demo,
            vision=vision_in_config(item.files.config),
            devices=devices if self.gpu else None,
            sleep_mode=self.sleep_wanted,
        )

    def _budget(self, device: Device) -> int:
        return budget_bytes(self.settings.memory_budget, device.total)

    def _room(self) -> dict[int, int]:
        """Bytes each device can still give: its budget left, capped by what is free."""
        free = self._free_memory()
        room: dict[int, int] = {}
        for device in self.devices:
            held = sum(e.holds(device.index) for e in self._engines.values())
            left = self._budget(device) - held
            now = free.get(device.index)
            room[device.index] = min(left, now) if now is not None else left
        return room

    def plan(self, launches: Sequence[tuple[ModelLaunch, bool]]) -> list[Planned]:
        """Engines for `vllama serve --model` / `--demo`, placed within the budget before
        anything starts. Raises ModelTooLarge / NotEnoughMemory when they do not fit."""
        planned: list[Planned] = []
        for launch, demo in launches:
            item = self.catalog.configured_item(launch, demo)
            need = self.estimate(item)
            devices = choose_devices(need.per_device, need.devices, self.devices, self._room())
            if devices is None:
                raise self._no_room(item.model_id, need, waited=False)
            spec = self._spec(item, need, devices)
            planned.append(Planned(item, spec, need, devices))
            self._engines[item.model_id] = _Engine(
                item.model_id,
                spec,
                need,
                devices,
                "loaded",
                self._keep_alive(None),
                time.monotonic(),
            )
        return planned

    # --- the pool's questions -----------------------------------------------------------

    def _keep_alive(self, keep_alive: float | None) -> float:
        """A request's keep_alive, else the default; without on-demand loading an engine
        could not come back, so it never goes."""
        if not self.settings.on_demand:
            return -1.0
        return self.settings.model_keep_alive_s() if keep_alive is None else keep_alive

    async def find(self, name: str) -> str | None:
        for engine in self._engines.values():
            if engine.model_id in (name, strip_latest(name)):
                return engine.model_id
        if not self.settings.on_demand:
            return None
        item = await asyncio.to_thread(self.catalog.find, name)
        return item.model_id if item is not None else None

    async def offline_cards(self) -> list[ServedModel]:
        if not self.settings.on_demand:
            return []
        items = await asyncio.to_thread(self.catalog.all)
        loaded = {e.model_id for e in self._engines.values() if e.state == "loaded"}
        cards = []
        for item in items:
            if item.model_id in loaded:
                continue
            own = model_context(item.files.config or {})
            context = min(own, self.settings.context_length) if own else None
            cards.append(
                ServedModel(
                    id=item.model_id,
                    engine_urls=(),
                    max_model_len=context,
                    root=item.launch.model,
                    created=int(item.created),
                    capabilities=frozenset({item.kind}),
                )
            )
        return cards

    def state(self, url: str) -> LoadState | None:
        engine = next((e for e in self._engines.values() if e.url == url), None)
        if engine is None:
            return None
        if engine.keep_alive < 0:
            expires: float | None = None
        elif engine.busy or engine.expires_at is None:
            expires = time.time() + engine.keep_alive  # counts from when it goes idle
        else:
            expires = engine.expires_at
        if self.gpu:  # vLLM takes its --gpu-memory-utilization share at start
            return LoadState(expires, engine.need.total, engine.need.total)
        measured = self.processes.memory(url)
        return LoadState(expires, measured or engine.need.total, 0)

    # --- requests -------------------------------------------------------------------------

    def touch(self, model_id: str, keep_alive: float | None) -> None:
        engine = self._engines.get(model_id)
        if engine is None:
            return
        engine.keep_alive = self._keep_alive(keep_alive)
        engine.last_used = time.monotonic()
        if not engine.busy and engine.state == "loaded":
            self._arm(engine, grace=_ZERO_GRACE_S)

    def busy(self, url: str) -> None:
        engine = self._by_url(url)
        if engine is not None:
            engine.busy = True
            engine.last_used = time.monotonic()
            self._cancel_timer(engine)

    def idle(self, url: str) -> None:
        engine = self._by_url(url)
        if engine is not None:
            engine.busy = False
            engine.last_used = time.monotonic()
            self._arm(engine)
        self._idle.set()

    def _by_url(self, url: str) -> _Engine | None:
        return next((e for e in self._engines.values() if e.url == url), None)

    # --- keep_alive -----------------------------------------------------------------------

    def _cancel_timer(self, engine: _Engine) -> None:
        if engine.timer is not None:
            engine.timer.cancel()
            engine.timer = None
        engine.expires_at = None

    def _arm(self, engine: _Engine, *, grace: float = 0.0) -> None:
        """Start the keep_alive countdown of an idle engine."""
        self._cancel_timer(engine)
        if engine.state != "loaded" or engine.keep_alive < 0:
            return
        delay = engine.keep_alive if engine.keep_alive > 0 else grace
        loop = asyncio.get_running_loop()
        engine.expires_at = time.time() + delay
        engine.timer = loop.call_later(delay, self._expired, engine.model_id)

    def _expired(self, model_id: str) -> None:
        engine = self._engines.get(model_id)
        if engine is None or engine.busy or engine.state != "loaded":
            return
        engine.timer = None
        idle = format_duration(engine.keep_alive) if engine.keep_alive else "0"
        log.info("unloading model %s: idle for its keep_alive (%s)", model_id, idle)
        self._spawn(self._unload(engine, "keep_alive"))

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- unloading ------------------------------------------------------------------------

    async def unload(self, model_id: str) -> bool:
        engine = self._engines.get(model_id)
        if engine is None or engine.state in ("loading", "stopping"):
            return False
        if engine.state == "sleeping":
            return True  # nothing of it is loaded
        if engine.busy:  # as Ollama: it goes as soon as its requests finish
            engine.keep_alive = 0
            return True
        log.info("unloading model %s: asked to (keep_alive 0)", model_id)
        await self._unload(engine, "requested")
        return True

    async def _unload(self, engine: _Engine, reason: str) -> None:
        """Free the engine's memory: sleep when it can, stop it otherwise."""
        if engine.state != "loaded":
            return
        self._cancel_timer(engine)
        if self._metrics is not None:  # counted when decided: /api/ps no longer lists it
            self._metrics.model_unloaded(engine.model_id, reason)
        if engine.can_sleep:
            self.pool.remove_engine(engine.url)
            engine.state = "sleeping"
            try:
                started = time.monotonic()
                await sleep_mode.sleep(self.pool.session, engine.url, self.settings.sleep_level)
                log.info(
                    "model %s asleep (level %d) in %.1fs",
                    engine.model_id,
                    self.settings.sleep_level,
                    time.monotonic() - started,
                )
            except sleep_mode.SleepError as exc:
                log.warning("model %s did not go to sleep (%s); stopping it", engine.model_id, exc)
                engine.state = "loaded"
                await self._stop(engine)
        else:
            await self._stop(engine)
        self._report()

    async def _stop(self, engine: _Engine) -> None:
        engine.state = "stopping"
        self._cancel_timer(engine)
        self.pool.remove_engine(engine.url)
        started = time.monotonic()
        try:
            await asyncio.to_thread(self.processes.remove, engine.url)
        finally:
            if self._engines.get(engine.model_id) is engine:
                del self._engines[engine.model_id]
        log.info("model %s stopped in %.1fs", engine.model_id, time.monotonic() - started)

    # --- loading --------------------------------------------------------------------------

    async def load(self, model_id: str) -> None:
        task = self._loading.get(model_id)
        if task is None:
            task = asyncio.ensure_future(self._load(model_id))
            self._loading[model_id] = task

            def done(t: asyncio.Task[None]) -> None:
                self._loading.pop(model_id, None)
                if not t.cancelled():
                    t.exception()  # retrieved: every waiter gets it; none may be left

            task.add_done_callback(done)
        # A client that hangs up stops waiting; the load goes on for the next request.
        await asyncio.shield(task)

    async def _load(self, model_id: str) -> None:
        async with self._lock:
            engine = self._engines.get(model_id)
            if engine is not None and engine.state == "loaded":
                return
            if engine is not None and engine.state == "sleeping":
                await self._wake(engine)
                return
            item = await asyncio.to_thread(self.catalog.find, model_id)
            if item is None:
                raise ModelNotFound(model_id)
            need = self.estimate(item)
            devices = await self._make_room(item.model_id, need, None)
            await self._start(item, need, devices)

    async def _start(self, item: Loadable, need: MemoryNeed, devices: tuple[int, ...]) -> None:
        spec = self._spec(item, need, devices)
        engine = _Engine(
            item.model_id,
            spec,
            need,
            devices,
            "loading",
            self._keep_alive(None),
            time.monotonic(),
        )
        self._engines[item.model_id] = engine
        where = ", ".join(self._label(d) for d in devices)
        log.info(
            "loading model %s on %s at %s: needs %s",
            item.model_id,
            where,
            spec.url,
            need.describe(),
        )
        started = time.monotonic()
        try:
            await asyncio.to_thread(self.processes.add, spec)
            await self._wait_ready(engine, started)
            engine.can_sleep = self.sleep_wanted and await sleep_mode.can_sleep(
                self.pool.session, spec.url
            )
            engine.state = "loaded"
            await self.pool.add_engine(spec.engine_config())
        except BaseException:
            self._engines.pop(item.model_id, None)
            with contextlib.suppress(Exception):
                self.pool.remove_engine(spec.url)
                await asyncio.to_thread(self.processes.remove, spec.url)
            raise
        seconds = time.monotonic() - started
        log.info("model %s ready in %.1fs", item.model_id, seconds)
        if self._metrics is not None:
            self._metrics.model_loaded(item.model_id, "start", seconds)
        self._arm(engine, grace=_ZERO_GRACE_S)
        self._report()

    async def _wait_ready(self, engine: _Engine, started: float) -> None:
        deadline = started + self.settings.engine_startup_timeout_s
        log_path = self.processes.log_paths().get(engine.url)
        while True:
            ready, failed = self.processes.status(engine.url)
            if ready:
                return
            if failed or time.monotonic() > deadline:
                why = (
                    failed or f"was not healthy after {self.settings.engine_startup_timeout_s:.0f}s"
                )
                log.error("engine for model %s %s; see its log %s", engine.model_id, why, log_path)
                raise EngineLoadFailed(
                    f"the engine for model '{engine.model_id}' {why}; the server log names "
                    "its log file"
                )
            await asyncio.sleep(_POLL_S)

    async def _wake(self, engine: _Engine) -> None:
        need = replace(engine.need, overhead=0)  # its overhead is held already
        await self._make_room(engine.model_id, need, engine, devices=engine.devices)
        started = time.monotonic()
        try:
            await sleep_mode.wake(self.pool.session, engine.url)
        except sleep_mode.SleepError as exc:
            log.warning("model %s did not wake (%s); restarting it", engine.model_id, exc)
            engine.state = "loaded"
            await self._stop(engine)
            item = await asyncio.to_thread(self.catalog.find, engine.model_id)
            if item is None:
                raise ModelNotFound(engine.model_id) from exc
            need = self.estimate(item)
            devices = await self._make_room(item.model_id, need, None)
            await self._start(item, need, devices)
            return
        engine.state = "loaded"
        await self.pool.add_engine(engine.spec.engine_config())
        seconds = time.monotonic() - started
        log.info("model %s awake in %.2fs", engine.model_id, seconds)
        if self._metrics is not None:
            self._metrics.model_loaded(engine.model_id, "wake", seconds)
        self._arm(engine, grace=_ZERO_GRACE_S)
        self._report()

    # --- memory ---------------------------------------------------------------------------

    def _label(self, index: int) -> str:
        device = next((d for d in self.devices if d.index == index), None)
        return device.label if device is not None else f"device {index}"

    def _victim(self, keep: _Engine | None) -> _Engine | None:
        """What to unload next: a sleeping engine (it holds only its overhead), else the
        least recently used idle one."""
        idle = [e for e in self._engines.values() if e is not keep and not e.busy]
        for state in ("sleeping", "loaded"):
            candidates = [e for e in idle if e.state == state]
            if candidates:
                return min(candidates, key=lambda e: e.last_used)
        return None

    async def _make_room(
        self,
        model_id: str,
        need: MemoryNeed,
        keep: _Engine | None,
        *,
        devices: tuple[int, ...] | None = None,
    ) -> tuple[int, ...]:
        """Devices with room for `need`, unloading LRU idle engines and waiting for busy
        ones (at most engine_wait_s) as needed."""
        candidates = [d for d in self.devices if devices is None or d.index in devices]
        if sum(self._budget(d) >= need.per_device for d in candidates) < need.devices:
            raise ModelTooLarge(self._no_room_text(model_id, need, never=True))
        deadline = time.monotonic() + self.settings.engine_wait_s
        while True:
            room = self._room()
            if keep is not None:  # waking: its own overhead is already counted
                room = {i: r for i, r in room.items() if devices is None or i in devices}
            chosen = choose_devices(need.per_device, need.devices, candidates, room)
            if chosen is not None:
                return chosen
            victim = self._victim(keep)
            if victim is not None:
                log.info(
                    "unloading model %s (least recently used) to make room for %s",
                    victim.model_id,
                    model_id,
                )
                # Sleeping frees all but the overhead: enough, or stop it outright.
                gain = victim.need.per_device - victim.need.overhead
                enough = all(room.get(d, 0) + gain >= need.per_device for d in victim.devices)
                if victim.state == "sleeping" or not (victim.can_sleep and enough):
                    if self._metrics is not None:
                        self._metrics.model_unloaded(victim.model_id, "evicted")
                    await self._stop(victim)
                    self._report()
                else:
                    await self._unload(victim, "evicted")
                continue
            left = deadline - time.monotonic()
            if any(e.state == "stopping" for e in self._engines.values()):
                await asyncio.sleep(_POLL_S)  # its memory is on its way back (keep_alive)
                continue
            busy = [e for e in self._engines.values() if e.busy and e is not keep]
            if not busy or left <= 0:
                raise self._no_room(model_id, need, waited=bool(busy))
            self._idle.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), left)

    def _no_room(self, model_id: str, need: MemoryNeed, *, waited: bool) -> NotEnoughMemory:
        text = self._no_room_text(model_id, need, never=False)
        if waited:
            text += f" (waited {self.settings.engine_wait_s:.0f}s for them to finish)"
        return NotEnoughMemory(text)

    def _no_room_text(self, model_id: str, need: MemoryNeed, *, never: bool) -> str:
        budgets = ", ".join(f"{d.label} {format_size(self._budget(d))}" for d in self.devices)
        if never:
            return (
                f"model '{model_id}' needs {need.describe()}, more than the memory budget "
                f"({budgets}); raise memory_budget, lower context_length or num_parallel, or "
                "serve it on a larger device"
            )
        loaded = [
            f"'{e.model_id}' ({format_size(e.need.total)}, " + ("busy" if e.busy else e.state) + ")"
            for e in self._engines.values()
        ]
        room = self._room()
        free = ", ".join(f"{self._label(i)} {format_size(max(r, 0))} free" for i, r in room.items())
        held = "; loaded: " + ", ".join(loaded) if loaded else "; nothing vllama started is loaded"
        return (
            f"cannot load model '{model_id}' now: it needs {need.describe()}, and {free} "
            f"(budget {budgets}){held}; retry when a request finishes, stop a model with "
            "`vllama stop NAME`, or raise memory_budget"
        )

    def _report(self) -> None:
        if self._metrics is not None:
            self._metrics.set_models_loaded(
                sum(e.state == "loaded" for e in self._engines.values())
            )
