"""Which models an engine can be started for, and with what: the models configured for
`vllama serve` (`--model`, `[[models]]`, `--demo`) and every model pulled into the cache.

A pulled model is loaded from its snapshot directory (offline: it is all there) and
served under its repo id; names people type (aliases, Ollama's library names) resolve to
that id first. Reads the disk: call it off the event loop.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vllama.config import ModelLaunch, Settings
from vllama.engine.launch import served_name
from vllama.models.info import ModelFiles, model_dir, read_model_files
from vllama.models.store import ModelStore
from vllama.names import strip_latest
from vllama.upstream.discovery import kind_from_architectures

_LIST_TTL_S = 2.0  # the cache is scanned at most this often for lists (a miss rescans)


@dataclass(frozen=True)
class Loadable:
    model_id: str  # the name its engine serves (--served-model-name)
    launch: ModelLaunch  # what to start: the model (a directory or repo id) and its flags
    files: ModelFiles
    demo: bool = False  # the demo model: the CPU build's demo flags apply
    created: float = 0.0

    @property
    def kind(self) -> str:
        return kind_from_architectures(self.files.config) or "completion"


@dataclass
class Catalog:
    settings: Settings
    engine_args: list[str] = field(default_factory=list)  # `vllama serve`'s engine flags
    configured: list[tuple[ModelLaunch, bool]] = field(default_factory=list)  # (launch, demo)
    _pulled: list[Loadable] = field(default_factory=list)
    _scanned: float = -1e9
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def configured_item(self, launch: ModelLaunch, demo: bool) -> Loadable:
        ref = self.settings.resolve_alias(launch.model)
        files = read_model_files(ref, self.settings.cache_dir)
        return Loadable(served_name(launch, ref), launch, files, demo, files.modified_unix or 0)

    def _configured(self) -> list[Loadable]:
        return [self.configured_item(launch, demo) for launch, demo in self.configured]

    def _scan(self) -> list[Loadable]:
        """Every complete model in the cache, loadable from its snapshot directory."""
        store = ModelStore(self.settings)
        out = []
        for model in store.list():
            if not model.complete:
                continue
            # The demo model's folder is the model; a hub repo's is its snapshot.
            demo = model.kind == "demo"
            snapshot = Path(model.path) if demo else model_dir(model.name, self.settings.cache_dir)
            if snapshot is None:
                continue
            launch = ModelLaunch(
                model=str(snapshot), served_name=model.name, engine_args=list(self.engine_args)
            )
            files = read_model_files(str(snapshot), self.settings.cache_dir)
            out.append(Loadable(model.name, launch, files, demo, model.modified_unix))
        return out

    def _pulled_models(self, *, fresh: bool) -> list[Loadable]:
        with self._lock:
            if fresh or time.monotonic() - self._scanned > _LIST_TTL_S:
                self._pulled = self._scan()
                self._scanned = time.monotonic()
            return list(self._pulled)

    def all(self) -> list[Loadable]:
        """Configured models first, then pulled ones (each id once)."""
        seen: dict[str, Loadable] = {}
        for item in [*self._configured(), *self._pulled_models(fresh=False)]:
            seen.setdefault(item.model_id, item)
        return list(seen.values())

    def find(self, name: str) -> Loadable | None:
        """The model `name` means (alias, library name, id or a configured model's name)."""
        wanted = {name, strip_latest(name), self.settings.resolve_alias(name)}
        for fresh in (False, True):  # a model pulled a moment ago: rescan before giving up
            for item in [*self._configured(), *self._pulled_models(fresh=fresh)]:
                if item.model_id in wanted or strip_latest(item.launch.model) in wanted:
                    return item
        return None
