"""What the pool asks of on-demand engines (lifecycle.scheduler.EngineScheduler).

The pool knows engines and routes to them; the loader knows which models could have an
engine (pulled, or configured), starts and stops those engines and tells the pool. The
pool tells the loader when an engine gets its first request in flight and when its last
one ends (`busy`/`idle`): that is what keep_alive counts from, whatever the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from vllama.upstream.pool import EnginePool, ServedModel


@dataclass(frozen=True)
class LoadState:
    """An on-demand engine's figures for /api/ps."""

    expires_at: float | None  # unix seconds; None: never (negative keep_alive)
    size: int  # bytes it holds: measured when running, else its reservation
    size_vram: int  # bytes of that on a GPU (0 on the CPU build)


class LoaderMetrics(Protocol):
    """What a loader reports (observability.metrics.Metrics has these)."""

    def model_loaded(self, model: str, how: str, seconds: float) -> None: ...
    def model_unloaded(self, model: str, reason: str) -> None: ...
    def set_models_loaded(self, n: int) -> None: ...


class EngineLoader(Protocol):
    async def start(self, pool: EnginePool, metrics: LoaderMetrics | None) -> None:
        """Attach to the started pool (set `pool.loader`) and route to preloaded engines."""
        ...

    async def close(self) -> None: ...

    async def find(self, name: str) -> str | None:
        """The model id an engine would serve for `name` (a pulled or configured model,
        with the library names and aliases already resolved), or None."""
        ...

    async def load(self, model_id: str) -> None:
        """Start (or wake) an engine for `model_id` and add it to the pool; one start for
        any number of concurrent callers. Raises upstream.errors.UpstreamError."""
        ...

    def touch(self, model_id: str, keep_alive: float | None) -> None:
        """A request for `model_id` arrived: its keep_alive (seconds; negative: forever;
        None: the default) now applies, and the model is the most recently used."""
        ...

    def busy(self, url: str) -> None: ...  # the engine's first request in flight
    def idle(self, url: str) -> None: ...  # its last request ended

    async def unload(self, model_id: str) -> bool:
        """Stop (or put to sleep) the engine of `model_id` now; False when it has none the
        loader manages."""
        ...

    def state(self, url: str) -> LoadState | None:
        """Figures of the engine at `url`; None for an engine the loader does not manage."""
        ...

    async def offline_cards(self) -> list[ServedModel]:
        """Models that could be loaded but have no engine now (for /api/tags, /api/show)."""
        ...
