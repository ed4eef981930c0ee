"""The model store: models on disk in the Hugging Face cache, plus the demo model.

`vllama pull/list/rm` and the façade's `/api/pull` and `/api/delete` use `ModelStore`. Downloads go file by file through `models.download` (resumable: an
interrupted file continues from its `blobs/<etag>.incomplete` part with a Range request;
`HF_TOKEN` and `HF_ENDPOINT` are honoured). A model whose pull did not finish is listed as
incomplete and is not handed to an engine. Hub failures become `StoreError`s whose message
says what to do next.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vllama.config import Settings
from vllama.demo import DEMO_MODEL_NAME, demo_dir, is_demo_dir
from vllama.models import download
from vllama.names import strip_latest

Progress = dict[str, Any]


class StoreError(Exception):
    """A store operation failed; `status` is the HTTP status the façade answers with."""

    status = 500


class ModelNotInStore(StoreError):
    status = 404


class ModelInUse(StoreError):
    status = 409


class HubAccessDenied(StoreError):
    """Gated or private model (HTTP 401/403)."""

    status = 403


class HubModelNotFound(StoreError):
    status = 404


class HubUnreachable(StoreError):
    status = 502


class DiskFull(StoreError):
    status = 507  # Insufficient Storage


@dataclass(frozen=True)
class StoredModel:
    name: str  # repo id, or the demo model's name
    path: str
    size_bytes: int
    files: int
    modified_unix: float
    revisions: tuple[str, ...]
    kind: str  # "hub" or "demo"
    complete: bool = True  # False: a pull was cut short; `vllama pull` finishes it

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["revisions"] = list(self.revisions)
        return out


def hub_endpoint() -> str:
    """Read at call time (the hub client reads HF_ENDPOINT once, at import)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _dir_size(path: Path) -> tuple[int, int, float]:
    size = files = 0
    modified = 0.0
    for p in path.rglob("*"):
        if p.is_file():
            st = p.stat()
            size += st.st_size
            files += 1
            modified = max(modified, st.st_mtime)
    return size, files, modified


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status behind a hub error, following the exception chain."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
        seen = seen.__cause__ or seen.__context__
    return None


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**8 else f"{n / 1e6:.1f} MB"


def hub_error(exc: BaseException, repo_id: str, revision: str | None) -> StoreError:
    """Translate a huggingface_hub failure into an error that says what to do next."""
    from huggingface_hub import errors as hf_errors

    endpoint = hub_endpoint()
    if isinstance(exc, download.NotEnoughSpace):
        return DiskFull(
            f"not enough disk space for {repo_id} in {exc.path}: {_gb(exc.needed)} more needed, "
            f"{_gb(exc.free)} free; free space there or set cache_dir (VLLAMA_CACHE_DIR) to a "
            "larger disk, then pull again"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DiskFull(
            f"the disk filled up while downloading {repo_id} ({exc.filename or 'the model cache'}); "
            "free space or set cache_dir (VLLAMA_CACHE_DIR) to a larger disk, then pull again: "
            "it continues where it stopped"
        )
    status = _http_status(exc)
    if isinstance(exc, hf_errors.GatedRepoError) or status == 403:
        return HubAccessDenied(
            f"{repo_id} is gated (HTTP {status or 403}): accept its terms at {endpoint}/{repo_id} "
            "while logged in, then set HF_TOKEN to a token of that account and pull again"
        )
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return HubModelNotFound(
            f"revision {revision!r} of {repo_id} not found; check --revision (a branch, tag or commit)"
        )
    if status == 401 or isinstance(exc, hf_errors.RepositoryNotFoundError):
        hint = (
            "check HF_TOKEN: it has no access to it"
            if os.environ.get("HF_TOKEN")
            else "if it is private or gated, set HF_TOKEN to a token with access"
        )
        return HubAccessDenied(
            f"{repo_id} not found on {endpoint} or not accessible (HTTP {status or 401}): "
            f"check the name (an 'org/model' repo id or an alias from the config); {hint}"
        )
    if isinstance(exc, StoreError):
        return exc
    return HubUnreachable(
        f"cannot reach the model hub at {endpoint} ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else 'no answer'}); check the network and "
        "HTTPS_PROXY, set HF_ENDPOINT to a reachable mirror, or copy the model directory to "
        "this machine and serve it by path (vllama serve --model /path/to/model)"
    )


class ModelStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def cache_dir(self) -> Path | None:
        return self.settings.cache_dir

    def resolve(self, name: str) -> str:
        """The repo id for an Ollama-style name or alias."""
        return strip_latest(self.settings.resolve_alias(name))

    # --- pull --------------------------------------------------------------------------

    def pull(
        self,
        name: str,
        *,
        revision: str | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> Path:
        """Download (or finish downloading) a model; `progress` gets Ollama-style events:
        manifest, one {status,digest,total,completed} series per file, then success."""
        emit = progress or (lambda event: None)
        repo_id = self.resolve(name)
        revision = revision or "main"
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            raise HubUnreachable(
                f"cannot download {repo_id}: HF_HUB_OFFLINE=1 is set here, which forbids "
                "downloads; unset it for the pull (engines may keep it) and pull again"
            )
        emit({"status": "pulling manifest"})
        try:
            plan = download.plan(repo_id, revision, self.cache_dir, hub_endpoint())
            download.check_space(plan, self.cache_dir)
            download.begin(self.cache_dir, plan)
            for item in plan.files:
                digest = (
                    "sha256:"
                    + hashlib.sha256(
                        f"{repo_id}@{plan.commit}/{item.filename}".encode()
                    ).hexdigest()
                )
                event = {"status": f"pulling {item.filename}", "digest": digest}

                def on_bytes(done: int, total: int, event: Progress = event) -> None:
                    emit({**event, "total": total, "completed": done})

                download.fetch_file(
                    repo_id, item.filename, plan.commit, self.cache_dir, hub_endpoint(), on_bytes
                )
            path = download.finish(self.cache_dir, plan)
        except Exception as exc:
            raise hub_error(exc, repo_id, revision) from exc
        emit({"status": "verifying sha256 digest"})
        emit({"status": "writing manifest"})
        emit({"status": "success"})
        return path

    async def pull_progress(
        self, name: str, *, revision: str | None = None
    ) -> AsyncIterator[Progress]:
        """`pull` as an async stream of its progress events. Raises StoreError (before or
        between events)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Progress | BaseException | None] = asyncio.Queue()

        def put(item: Progress | BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                self.pull(name, revision=revision, progress=put)
                put(None)
            except StoreError as exc:
                put(exc)

        thread = threading.Thread(target=work, name=f"pull-{name}", daemon=True)
        thread.start()
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def unfinished(self, name: str) -> str | None:
        """Why an engine must not be started on `name` from the cache: a pull of it was cut
        short. None when it is whole, or not in the cache at all."""
        model = self.find(name)
        if model is None or model.complete:
            return None
        return (
            f"model '{model.name}' is only partly downloaded in {model.path} (a pull was cut "
            f"short); finish it with `vllama pull {model.name}`, then start the engine"
        )

    # --- list / find / delete ----------------------------------------------------------

    def list(self) -> list[StoredModel]:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound

        out: list[StoredModel] = []
        try:
            info = scan_cache_dir(self.cache_dir)
        except CacheNotFound:
            info = None
        if info is not None:
            for repo in sorted(info.repos, key=lambda r: r.repo_id):
                if repo.repo_type != "model":
                    continue
                out.append(
                    StoredModel(
                        name=repo.repo_id,
                        path=str(repo.repo_path),
                        size_bytes=repo.size_on_disk,
                        files=repo.nb_files,
                        modified_unix=repo.last_modified,
                        revisions=tuple(sorted(r.commit_hash for r in repo.revisions)),
                        kind="hub",
                        complete=download.is_complete(Path(repo.repo_path)),
                    )
                )
        demo = demo_dir(self.settings)
        if is_demo_dir(demo):
            size, files, modified = _dir_size(demo)
            out.append(StoredModel(DEMO_MODEL_NAME, str(demo), size, files, modified, (), "demo"))
        return out

    def find(self, name: str) -> StoredModel | None:
        wanted = self.resolve(name)
        return next((m for m in self.list() if m.name in (wanted, strip_latest(name))), None)

    def delete(self, name: str, *, serving: Collection[str] = ()) -> int:
        """Remove a model from disk; return the bytes freed. `serving` holds what running
        engines serve (model ids and their roots): such a model is refused."""
        model = self.find(name)
        if model is None:
            raise ModelNotInStore(
                f"model '{name}' is not in the local store ({self.cache_dir or 'the Hugging Face cache'}); "
                "`vllama list` shows what is there"
            )
        if is_served(model, serving):
            raise ModelInUse(
                f"model '{model.name}' is being served by a running engine; stop that engine "
                "(or `vllama serve`) first, then remove it"
            )
        if model.kind == "demo":
            shutil.rmtree(model.path)
            return model.size_bytes
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir(self.cache_dir)
        strategy = info.delete_revisions(*model.revisions)
        freed = strategy.expected_freed_size
        strategy.execute()
        # Refs and the empty repo folder stay behind after deleting revisions; drop them.
        shutil.rmtree(model.path, ignore_errors=True)
        return freed


def is_served(model: StoredModel, serving: Iterable[str]) -> bool:
    """True when any served id or engine root names this model (repo id, path or the
    cache folder `models--org--name`)."""
    cache_folder = "models--" + model.name.replace("/", "--")
    for item in serving:
        item = strip_latest(item)
        if item in (model.name, model.path) or cache_folder in item:
            return True
        if model.kind == "demo" and item.rstrip("/") == model.path.rstrip("/"):
            return True
    return False


class ApiModelStore:
    """The façade's seam (`app.state.model_store`, the protocol in
    server/routes/ollama/management.py): `/api/pull` streams `pull(name)`, `/api/delete`
    awaits `delete(name, serving)`, `serving` being everything a configured engine may
    serve, reachable or not (EnginePool.possibly_served)."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def pull(self, name: str) -> AsyncIterator[Progress]:
        return self.store.pull_progress(name)

    async def delete(self, name: str, serving: Collection[str] = ()) -> bool:
        """False: not in the store; ModelInUse when `serving` names it."""
        try:
            await asyncio.to_thread(self.store.delete, name, serving=serving)
        except ModelNotInStore:
            return False
        return True
