"""The model store against a STAND-IN hub on 127.0.0.1 (the real hub is unreachable here):
pull (blocking and Ollama-style progress), resume, list, delete, and the errors for
gated/private models and an unreachable hub."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.cli.hub_standin import COMMIT, GATED, PRIVATE, REPO, HubState, standin_hub
from vllama.config import Settings
from vllama.engine import demo_model
from vllama.models.store import (
    HubAccessDenied,
    HubUnreachable,
    ModelInUse,
    ModelNotInStore,
    ModelStore,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (d / "model.safetensors").write_bytes(os.urandom(300_000))
    (d / "tokenizer.json").write_text("{}")
    return d


@pytest.fixture
def hub(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubState]:
    with standin_hub(model_dir) as (url, state):
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield state


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(Settings.model_validate({"cache_dir": tmp_path / "cache"}))


def _collect(store: ModelStore, name: str) -> list[dict[str, object]]:
    async def go() -> list[dict[str, object]]:
        return [event async for event in store.pull_progress(name)]

    return asyncio.run(go())


def test_pull_downloads_every_file_byte_for_byte(store: ModelStore, hub: HubState) -> None:
    path = store.pull(REPO)
    assert path.name == COMMIT
    for name, data in hub.files.items():
        assert (path / name).read_bytes() == data
    [model] = store.list()
    assert model.name == REPO
    assert model.size_bytes == sum(len(d) for d in hub.files.values())
    assert model.files == len(hub.files)
    assert model.revisions == (COMMIT,)


def test_broken_transfer_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hub client hands bytes over in 10 MB chunks: a file past that can be resumed.
    src = tmp_path / "big"
    src.mkdir()
    data = os.urandom(12 * 2**20)
    (src / "model.safetensors").write_bytes(data)
    store = ModelStore(Settings.model_validate({"cache_dir": tmp_path / "cache"}))
    with standin_hub(src) as (url, hub):
        monkeypatch.setenv("HF_ENDPOINT", url)
        hub.cut_once = "model.safetensors"
        path = store.pull(REPO)
    ranges = [r[2] for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]
    assert ranges[0] is None and ranges[1] is not None
    assert ranges[1].startswith("bytes=") and int(ranges[1][6:].split("-")[0]) >= 10 * 2**20
    assert (path / "model.safetensors").read_bytes() == data


def test_pull_progress_is_ollama_shaped(store: ModelStore, hub: HubState) -> None:
    events = _collect(store, REPO + ":latest")
    assert events[0] == {"status": "pulling manifest"}
    assert events[-3:] == [
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    files = [e for e in events if "digest" in e]
    assert {str(e["status"]) for e in files} == {f"pulling {n}" for n in hub.files}
    for e in files:
        assert str(e["digest"]).startswith("sha256:") and len(str(e["digest"])) == 71
        assert 0 <= int(str(e["completed"])) <= int(str(e["total"]))
    last = {e["status"]: e for e in files}  # the last event per file says it is complete
    for name, data in hub.files.items():
        assert last[f"pulling {name}"]["completed"] == len(data) == last[f"pulling {name}"]["total"]
    assert store.find(REPO) is not None
    # A second pull finds everything cached and downloads nothing.
    before = sum(1 for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1])
    again = _collect(store, REPO)
    assert again[-1] == {"status": "success"}
    assert sum(1 for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]) == before


def test_gated_model_says_how_to_get_access(store: ModelStore, hub: HubState) -> None:
    with pytest.raises(HubAccessDenied, match="gated") as err:
        store.pull(GATED)
    assert "HF_TOKEN" in str(err.value) and err.value.status == 403


def test_private_model_401_names_hf_token(store: ModelStore, hub: HubState) -> None:
    with pytest.raises(HubAccessDenied, match="HTTP 401") as err:
        store.pull(PRIVATE)
    assert "HF_TOKEN" in str(err.value)


def test_gated_error_also_ends_a_progress_stream(store: ModelStore, hub: HubState) -> None:
    with pytest.raises(HubAccessDenied):
        _collect(store, GATED)


def test_unreachable_hub_says_what_to_do(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.procs import free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    with pytest.raises(HubUnreachable) as err:
        store.pull(REPO)
    message = str(err.value)
    assert "cannot reach the model hub" in message and "HF_ENDPOINT" in message
    assert "--model /path" in message


def test_delete_frees_space_and_refuses_served_models(store: ModelStore, hub: HubState) -> None:
    store.pull(REPO)
    size = sum(len(d) for d in hub.files.values())
    with pytest.raises(ModelInUse):
        store.delete(REPO, serving={REPO})
    root = f"/x/models--{REPO.replace('/', '--')}/snapshots/{COMMIT}"
    with pytest.raises(ModelInUse):
        store.delete(REPO, serving={"served-name", root})  # served under another id
    assert store.delete(REPO, serving={"other-model"}) == size
    assert store.list() == []
    assert store.cache_dir is not None
    assert not (store.cache_dir / f"models--{REPO.replace('/', '--')}").exists()
    with pytest.raises(ModelNotInStore):
        store.delete(REPO)


def test_demo_model_is_listed_and_removable(tmp_path: Path) -> None:
    settings = Settings.model_validate({"cache_dir": tmp_path})
    demo = tmp_path / demo_model.DEMO_MODEL_NAME
    demo.mkdir()
    (demo / "model.safetensors").write_bytes(b"x" * 1000)
    (demo / "vllama-demo.json").write_text(
        json.dumps({"fingerprint": demo_model._fingerprint()})  # as build_demo_model writes it
    )
    store = ModelStore(settings)
    [model] = store.list()
    assert (model.name, model.kind) == ("vllama-demo", "demo")
    assert model.size_bytes == 1000 + (demo / "vllama-demo.json").stat().st_size
    with pytest.raises(ModelInUse):
        store.delete("vllama-demo:latest", serving={"vllama-demo"})
    assert store.delete("vllama-demo", serving=()) == model.size_bytes
    assert not demo.exists()


def test_a_demo_of_an_older_recipe_is_on_disk_too(tmp_path: Path) -> None:
    demo = tmp_path / demo_model.DEMO_MODEL_NAME
    demo.mkdir()
    (demo / "vllama-demo.json").write_text(json.dumps({"fingerprint": "older"}))
    store = ModelStore(Settings.model_validate({"cache_dir": tmp_path}))
    assert [m.name for m in store.list()] == ["vllama-demo"]  # listed, so `rm` can free it
    assert not demo_model.is_built(demo)  # while `serve --demo` rebuilds it


def test_names_people_type_resolve_to_repos(tmp_path: Path) -> None:
    """`vllama pull qwen2.5:0.5b`: Ollama's library name, a configured alias winning over
    it, and a repo id as is."""
    store = ModelStore(Settings(cache_dir=tmp_path, aliases={"mine": "org/mine"}))
    assert store.resolve("qwen2.5:0.5b") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert store.resolve("all-minilm:latest") == "sentence-transformers/all-MiniLM-L6-v2"
    assert store.resolve("mine:latest") == "org/mine"
    assert store.resolve("Org/Model") == "Org/Model"
    custom = ModelStore(Settings(cache_dir=tmp_path, aliases={"qwen2.5:0.5b": "me/tuned"}))
    assert custom.resolve("qwen2.5:0.5b") == "me/tuned"
