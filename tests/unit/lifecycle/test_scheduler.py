"""The scheduler's rules, with the real EnginePool routing real HTTP requests to STAND-IN
engines (a few-line HTTP server each: /health, /v1/models, chat, and vLLM's sleep
endpoints; a real vLLM start takes a minute and sleep mode needs a GPU, which
tests/integration/test_lifecycle.py covers on the CPU build): one start for concurrent
first requests, keep_alive (positive, 0, negative), LRU eviction within the budget,
waiting for busy engines then a 503 that names them, a model larger than the budget,
a failed load, and sleep/wake instead of stop/start where the engine can sleep."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.procs import await_for
from vllama.config import ModelLaunch, Settings
from vllama.engine.launch import EngineSpec
from vllama.lifecycle.catalog import Loadable
from vllama.lifecycle.memory import Device, GiB
from vllama.lifecycle.scheduler import EngineScheduler
from vllama.models.info import ModelFiles
from vllama.upstream.errors import EngineLoadFailed, ModelTooLarge, NotEnoughMemory
from vllama.upstream.pool import EnginePool

pytestmark = pytest.mark.timeout(60)

# A demo-sized Llama: 2 layers, 1 KV head of 64: 512 B of KV cache per token.
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "hidden_size": 128,
    "max_position_embeddings": 2048,
    "torch_dtype": "bfloat16",
}


class StandInEngine:
    """Serves one model id over HTTP the way vLLM's server answers the pool."""

    def __init__(self, spec: EngineSpec, *, sleepable: bool) -> None:
        self.spec = spec
        self.sleeping = False
        self.calls: list[str] = []
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                engine.calls.append(f"GET {self.path}")
                if self.path == "/health":
                    self._json(200, {})
                elif self.path == "/v1/models":
                    card = {"id": spec.name, "object": "model", "created": 1, "root": "/m"}
                    self._json(200, {"object": "list", "data": [{**card, "max_model_len": 64}]})
                elif self.path == "/is_sleeping" and sleepable:
                    self._json(200, {"is_sleeping": engine.sleeping})
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self) -> None:
                engine.calls.append(f"POST {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.startswith("/sleep") and sleepable:
                    engine.sleeping = True
                    self._json(200, {"status": "sleeping"})
                elif self.path == "/wake_up" and sleepable:
                    engine.sleeping = False
                    self._json(200, {"status": "awake"})
                elif self.path == "/v1/chat/completions":
                    if body == {}:  # the pool's discovery probe
                        self._json(400, {"error": {"message": "bad", "code": 400}})
                        return
                    time.sleep(float(body.get("hold_s", 0)))  # a long generation
                    self._json(200, {"model": body["model"], "served_by": spec.url})
                else:
                    self._json(404, {"error": "not found"})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", spec.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class StandInProcesses:
    """engine.supervisor.Supervisor's part the scheduler uses, with stand-in engines."""

    load_s: float = 0.2
    remove_s: float = 0.0  # how long stopping takes (vLLM's shutdown)
    sleepable: bool = False
    fail: set[str] = field(default_factory=set)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    running: dict[str, StandInEngine] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)

    def add(self, spec: EngineSpec) -> None:
        self.added.append(spec.name)
        self.started[spec.url] = time.monotonic()
        if spec.name not in self.fail:
            self.running[spec.url] = StandInEngine(spec, sleepable=self.sleepable)

    def remove(self, url: str) -> None:
        time.sleep(self.remove_s)
        engine = self.running.pop(url, None)
        if engine is not None:
            self.removed.append(engine.spec.name)
            engine.stop()

    def status(self, url: str) -> tuple[bool, str | None]:
        if url not in self.running:
            return False, "exited with code 1 while loading"
        return time.monotonic() - self.started[url] >= self.load_s, None

    def memory(self, url: str) -> int | None:
        return 123_000_000 if url in self.running else None

    def log_paths(self) -> dict[str, Path]:
        return {}


class StandInCatalog:
    def __init__(self, names: list[str]) -> None:
        self.items = {
            n: Loadable(
                n,
                ModelLaunch(model=f"/models/{n}", served_name=n),
                ModelFiles(config=CONFIG, size_bytes=1_000_000, parameter_count=500_000),
            )
            for n in names
        }

    def find(self, name: str) -> Loadable | None:
        return self.items.get(name.removesuffix(":latest"))

    def all(self) -> list[Loadable]:
        return list(self.items.values())


@dataclass
class Bench:
    pool: EnginePool
    scheduler: EngineScheduler
    processes: StandInProcesses

    async def chat(self, name: str, keep_alive: float | None = None, **body: Any) -> str:
        model = await self.pool.acquire(name, keep_alive)
        answer = await self.pool.post_json(model, "/v1/chat/completions", {"x": 1, **body})
        return str(answer["model"])

    def loaded(self) -> list[str]:
        return sorted(m.id for m in self.pool.models())


Make = Callable[..., Awaitable[Bench]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[Bench] = []

    async def build(
        models: tuple[str, ...] = ("org/a", "org/b"),
        *,
        processes: StandInProcesses | None = None,
        gpu: bool = False,
        **settings: Any,
    ) -> Bench:
        # Each model needs 2 GiB of overhead + 16 MiB of KV cache: a 3 GiB budget fits one.
        values = {
            "memory_budget": "3GiB",
            "engine_overhead": "2GiB",
            "keep_alive": "10m",
            "engine_wait_s": 0.5,
            "health_interval_s": 0.2,
            **settings,
        }
        config = Settings.model_validate(values)
        procs = processes or StandInProcesses()
        kind = "gpu" if gpu else "cpu"
        scheduler = EngineScheduler(
            config,
            procs,
            StandInCatalog(list(models)),  # type: ignore[arg-type]
            cpu_build=not gpu,
            devices=[Device(0, kind, 80 * GiB)],
            free_memory=lambda: {0: None},
        )
        pool = EnginePool(config)
        await pool.start()
        await scheduler.start(pool)
        bench = Bench(pool, scheduler, procs)
        made.append(bench)
        return bench

    yield build
    for bench in made:
        await bench.scheduler.close()
        await bench.pool.close()
        for url in list(bench.processes.running):
            bench.processes.remove(url)


async def test_concurrent_first_requests_share_one_start(make: Make) -> None:
    bench = await make()
    answers = await asyncio.gather(*(bench.chat("org/a") for _ in range(8)))
    assert answers == ["org/a"] * 8
    assert bench.processes.added == ["org/a"]
    assert bench.loaded() == ["org/a"]


async def test_a_then_b_unloads_a_then_a_again(make: Make) -> None:
    bench = await make()
    await bench.chat("org/a")
    await bench.chat("org/b")  # the budget fits one: the idle A goes first
    assert bench.loaded() == ["org/b"]
    assert bench.processes.removed == ["org/a"]
    await bench.chat("org/a:latest")
    assert bench.loaded() == ["org/a"]
    assert bench.processes.added == ["org/a", "org/b", "org/a"]


async def test_least_recently_used_goes_first(make: Make) -> None:
    bench = await make(("org/a", "org/b", "org/c"), memory_budget="5GiB")  # fits two
    await bench.chat("org/a")
    await bench.chat("org/b")
    await bench.chat("org/a")  # A is now the most recently used
    await bench.chat("org/c")
    assert bench.loaded() == ["org/a", "org/c"]
    assert bench.processes.removed == ["org/b"]


async def test_keep_alive_rules(make: Make) -> None:
    bench = await make(keep_alive="0.3s", memory_budget="10GiB")
    await bench.chat("org/a")  # the default: unloaded 0.3 s after its request ended
    state = bench.pool.load_state(bench.pool.resolve("org/a"))
    assert state is not None and state.expires_at is not None
    assert 0 < state.expires_at - time.time() <= 0.3
    assert state.size == 123_000_000 and state.size_vram == 0  # measured; CPU build
    await await_for(lambda: bench.loaded() == [], "nothing loaded", 5.0)
    await bench.chat("org/b", keep_alive=-1)  # negative: stays
    await bench.chat("org/a", keep_alive=0)  # 0: gone as soon as its request ended
    await await_for(lambda: bench.loaded() == ["org/b"], "org/b alone loaded", 1.0)
    await asyncio.sleep(0.5)
    assert bench.loaded() == ["org/b"]
    forever = bench.pool.load_state(bench.pool.resolve("org/b"))
    assert forever is not None and forever.expires_at is None


async def test_a_model_waits_for_memory_that_is_being_freed(make: Make) -> None:
    """A expires (keep_alive) and takes a while to stop; B, asked for meanwhile, waits for
    that memory instead of being refused (nothing is busy, yet the budget is full)."""
    procs = StandInProcesses(remove_s=1.0)
    bench = await make(processes=procs, keep_alive="0.1s", engine_wait_s=0.1)
    await bench.chat("org/a")
    await await_for(
        lambda: bench.scheduler._engines["org/a"].state == "stopping", "org/a stopping", 5.0
    )
    assert await bench.chat("org/b") == "org/b"
    assert procs.removed == ["org/a"] and bench.loaded() == ["org/b"]


async def test_unload_now_and_not_while_busy(make: Make) -> None:
    bench = await make(memory_budget="10GiB")
    await bench.chat("org/a")
    assert await bench.pool.unload("org/a") is True
    assert bench.loaded() == []
    assert await bench.pool.unload("org/a") is True  # known, nothing to do
    assert await bench.pool.unload("org/zzz") is False
    # A busy model goes when its request ends (Ollama's rule for `ollama stop`).
    busy = asyncio.ensure_future(bench.chat("org/b", hold_s=0.5))
    await await_for(lambda: bench.loaded() == ["org/b"], "org/b alone loaded", 5.0)
    await asyncio.sleep(0.1)
    assert await bench.pool.unload("org/b") is True
    assert bench.loaded() == ["org/b"]
    assert await busy == "org/b"
    await await_for(lambda: bench.loaded() == [], "nothing loaded", 1.0)


async def test_busy_engines_hold_the_memory_then_503_names_them(make: Make) -> None:
    bench = await make(engine_wait_s=0.4)
    busy = asyncio.ensure_future(bench.chat("org/a", hold_s=1.5))
    await await_for(lambda: bench.loaded() == ["org/a"], "org/a alone loaded", 5.0)
    await asyncio.sleep(0.1)
    with pytest.raises(NotEnoughMemory) as exc:
        await bench.chat("org/b")
    message = exc.value.message
    assert "cannot load model 'org/b'" in message and "'org/a'" in message and "busy" in message
    assert "2.0 GiB" in message and "waited" in message
    assert exc.value.status == 503 and exc.value.retry_after
    await busy
    # Waiting long enough: B loads as soon as A's request ends.
    bench.scheduler.settings.engine_wait_s = 5.0
    busy = asyncio.ensure_future(bench.chat("org/a", hold_s=0.5))
    await asyncio.sleep(0.1)
    assert await bench.chat("org/b") == "org/b"
    assert await busy == "org/a"
    assert bench.loaded() == ["org/b"]


async def test_a_model_larger_than_the_budget_is_refused_at_once(make: Make) -> None:
    bench = await make(memory_budget="1GiB")
    started = time.monotonic()
    with pytest.raises(ModelTooLarge) as exc:
        await bench.chat("org/a")
    assert time.monotonic() - started < 0.4  # no waiting: it never fits
    assert exc.value.status == 507
    assert "needs 2.0 GiB" in exc.value.message and "host memory 1.0 GiB" in exc.value.message
    assert bench.processes.added == []


async def test_a_failed_load_is_an_error_and_the_next_request_tries_again(make: Make) -> None:
    procs = StandInProcesses(fail={"org/a"})
    bench = await make(processes=procs)
    with pytest.raises(EngineLoadFailed) as exc:
        await bench.chat("org/a")
    assert "exited with code 1 while loading" in exc.value.message
    assert "/models" not in exc.value.message  # no paths to the client
    procs.fail.clear()
    assert await bench.chat("org/a") == "org/a"
    assert procs.added == ["org/a", "org/a"]


async def test_sleep_mode_stand_in_sleeps_and_wakes_instead_of_restarting(make: Make) -> None:
    """STAND-IN for a GPU build: the engines answer vLLM 0.32's /is_sleeping, /sleep and
    /wake_up as its dev-mode router does; no GPU here to run the real thing."""
    procs = StandInProcesses(sleepable=True)
    bench = await make(("org/a", "org/b", "org/c"), processes=procs, gpu=True, memory_budget="5GiB")
    await bench.chat("org/a")
    spec_flags = bench.scheduler._engines["org/a"].spec
    assert "--enable-sleep-mode" in spec_flags.command
    assert spec_flags.env["VLLM_SERVER_DEV_MODE"] == "1"
    assert spec_flags.env["CUDA_VISIBLE_DEVICES"] == "0"
    util = spec_flags.command[spec_flags.command.index("--gpu-memory-utilization") + 1]
    assert util == "0.03"  # (2 GiB + 16 MiB) of an 80 GiB GPU, rounded up
    await bench.chat("org/b")  # 5 GiB fits both awake
    assert await bench.pool.unload("org/a") is True
    engine_a = next(e for e in procs.running.values() if e.spec.name == "org/a")
    assert engine_a.sleeping and bench.loaded() == ["org/b"]
    assert procs.removed == []  # asleep, not stopped
    assert await bench.chat("org/a") == "org/a"  # woken, not restarted
    assert not engine_a.sleeping and "POST /wake_up" in engine_a.calls
    assert procs.added == ["org/a", "org/b"]
    assert bench.loaded() == ["org/a", "org/b"]
    # Room for C: the least recently used idle engine is B; asleep it would still hold
    # its overhead, which leaves too little room, so it is stopped instead.
    await bench.chat("org/c")
    assert bench.loaded() == ["org/a", "org/c"]
    assert procs.removed == ["org/b"]
    # A sleeping engine is the first to go when room is needed.
    assert await bench.pool.unload("org/c") is True  # asleep: holds 2 GiB
    await bench.chat("org/b")  # 5 - A 2 - C asleep 2 < 2: C is stopped, A stays awake
    assert bench.loaded() == ["org/a", "org/b"]
    assert procs.removed == ["org/b", "org/c"]
