"""Resumable downloads into the Hugging Face cache layout, file by file.

huggingface_hub 2.x writes each download to a fresh `<etag>.<random>.incomplete` and
deletes it when the transfer fails (`file_download._download_to_tmp_and_move`,
huggingface/huggingface_hub#4228): an interrupted pull starts from zero. Here the partial
file keeps the classic name `blobs/<etag>.incomplete` and the next run asks the hub for
the rest with an HTTP Range request (the hub client's own `http_get`; a server that ignores
Range answers 200 and the file starts over, never corrupted). The finished blob is moved
into place and the hub client links it into the snapshot as it does for its own downloads,
so the cache stays the layout every other reader (vLLM, transformers) expects.

A pull in progress is marked by `.vllama-pulling` in the repo's cache folder, removed
after the last file, when the ref (`refs/main`) is written: `is_complete` reads it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PULLING_MARKER = ".vllama-pulling"
PARTIAL_SUFFIX = ".incomplete"

# (bytes of this file on disk so far, its size)
BytesProgress = Callable[[int, int], None]


class NotEnoughSpace(OSError):
    """The cache's disk cannot hold what is left to download."""

    def __init__(self, path: Path, needed: int, free: int) -> None:
        super().__init__(f"{path}: {needed} bytes needed, {free} free")
        self.path, self.needed, self.free = path, needed, free


@dataclass(frozen=True)
class PlannedFile:
    filename: str
    size: int
    cached: bool


@dataclass(frozen=True)
class Plan:
    repo_id: str
    revision: str
    commit: str
    files: tuple[PlannedFile, ...]

    @property
    def remaining_bytes(self) -> int:
        return sum(f.size for f in self.files if not f.cached)


def hub_cache(cache_dir: Path | None) -> Path:
    """The hub cache folder: vllama's cache_dir, else huggingface_hub's own rule
    (HF_HUB_CACHE, else $HF_HOME/hub)."""
    if cache_dir is not None:
        return cache_dir
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_dir(cache_dir: Path | None, repo_id: str) -> Path:
    return hub_cache(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def is_complete(path: Path) -> bool:
    """A cached model is whole when no vllama pull is under way or was cut short in it
    (the marker goes only after the last file), no partial file is left, and a snapshot
    holds files."""
    if (path / PULLING_MARKER).exists():
        return False
    if any(p.name.endswith(PARTIAL_SUFFIX) for p in (path / "blobs").glob("*")):
        return False
    return any(any(snap.iterdir()) for snap in (path / "snapshots").glob("*") if snap.is_dir())


def plan(repo_id: str, revision: str, cache_dir: Path | None, endpoint: str) -> Plan:
    """What a pull of `repo_id@revision` has to fetch (repo info and the file list)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils.tqdm import disable_progress_bars

    disable_progress_bars()  # vllama shows its own progress (CLI) or streams it (/api/pull)
    infos = snapshot_download(
        repo_id, revision=revision, cache_dir=cache_dir, dry_run=True, endpoint=endpoint
    )
    assert isinstance(infos, list)  # dry_run returns the file list
    commit = infos[0].commit_hash if infos else revision
    files = tuple(PlannedFile(i.filename, int(i.file_size or 0), bool(i.is_cached)) for i in infos)
    return Plan(repo_id, revision, commit, files)


def check_space(plan: Plan, cache_dir: Path | None) -> None:
    """Refuse before the first byte when the disk cannot hold the rest of the model."""
    folder = repo_dir(cache_dir, plan.repo_id)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    have = sum(
        p.stat().st_size for p in (folder / "blobs").glob(f"*{PARTIAL_SUFFIX}") if p.is_file()
    )
    needed = plan.remaining_bytes - have
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise NotEnoughSpace(hub_cache(cache_dir), needed, free)


def _reporter(on_bytes: BytesProgress, total: int) -> type[Any]:
    """A tqdm stand-in for the hub client's http_get: reports bytes on disk, a few times a
    second."""

    class Reporter:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.n = int(kwargs.get("initial") or 0)
            self._last = 0.0

        def __enter__(self) -> Reporter:
            return self

        def __exit__(self, *exc: object) -> None:
            on_bytes(self.n, total)

        def update(self, n: float | None = 1) -> None:
            self.n += int(n or 0)
            now = time.monotonic()
            if now - self._last >= 0.2:
                self._last = now
                on_bytes(self.n, total)

        def __getattr__(self, name: str) -> Callable[..., None]:
            return lambda *a, **k: None  # close, refresh, set_description, ...

    return Reporter


def fetch_file(
    repo_id: str,
    filename: str,
    commit: str,
    cache_dir: Path | None,
    endpoint: str,
    on_bytes: BytesProgress,
) -> None:
    """Download one file of a snapshot into the cache, continuing a partial download."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils._headers import build_hf_headers

    url = hf_hub_url(repo_id, filename, revision=commit, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint)
    if meta.etag is None or meta.location is None:
        raise OSError(
            f"the hub gave no ETag for {repo_id}/{filename}; it is not a Hugging Face hub"
        )
    size = int(meta.size or 0)
    blobs = repo_dir(cache_dir, repo_id) / "blobs"
    blob = blobs / meta.etag
    if not blob.exists():
        blobs.mkdir(parents=True, exist_ok=True)
        partial = blobs / (meta.etag + PARTIAL_SUFFIX)
        if partial.exists() and size and partial.stat().st_size > size:
            partial.unlink()  # longer than the file: not a prefix of it
        with partial.open("ab") as out:
            http_get(
                meta.location,
                out,
                resume_size=out.tell(),
                headers=build_hf_headers(),
                expected_size=size or None,
                displayed_filename=filename,
                tqdm_class=_reporter(on_bytes, size),
            )
        os.replace(partial, blob)
    else:
        on_bytes(size, size)
    # The blob is there: the hub client only links it into snapshots/<commit>/.
    hf_hub_download(repo_id, filename, revision=commit, cache_dir=cache_dir, endpoint=endpoint)


def begin(cache_dir: Path | None, plan: Plan) -> Path:
    """Mark the repo's cache folder as being pulled (visible to `list` as incomplete)."""
    folder = repo_dir(cache_dir, plan.repo_id)
    (folder / "snapshots").mkdir(parents=True, exist_ok=True)
    (folder / PULLING_MARKER).write_text(f"{plan.revision} {plan.commit}\n")
    return folder


def finish(cache_dir: Path | None, plan: Plan) -> Path:
    """Every file is there: point the ref at the snapshot, then drop the marker."""
    folder = repo_dir(cache_dir, plan.repo_id)
    (folder / "snapshots" / plan.commit).mkdir(parents=True, exist_ok=True)
    if plan.revision != plan.commit:
        ref = folder / "refs" / plan.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(ref.name + ".vllama-tmp")
        tmp.write_text(plan.commit)
        os.replace(tmp, ref)
    (folder / PULLING_MARKER).unlink(missing_ok=True)
    return folder / "snapshots" / plan.commit
