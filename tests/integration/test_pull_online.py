"""Models arrive through a REAL Hugging Face–protocol hub (olah on 127.0.0.1, tests/hub.py),
reached the operator's way, through HF_ENDPOINT:

- `vllama pull` downloads both models byte for byte (progress on a terminal, JSON lines
  for scripts), and an interrupted pull continues from its partial file with a Range
  request: the hub serves only the rest;
- `/api/pull` on a running façade (the real `ollama` client, streamed and not) puts the
  model in the store;
- bad input: a model that does not exist, a gated model without a token (the hub's gate is
  a STAND-IN: no mirror emulates gating), a full disk (a small tmpfs) each end with an
  error that says what to do, and nothing half-written is listed as complete or handed to
  an engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from tests import procs
from tests.engines import Engine, demo_model_dir, embed_model_dir
from tests.hub import DEMO_REPO, EMBED_REPO, GATED, MISSING, Hub, repo_commit
from tests.procs import free_port, wait_for
from tests.terminal import Terminal
from tests.unit.cli.serve_proc import run_serve

pytestmark = pytest.mark.timeout(300)

WEIGHTS = "model.safetensors"


def _env(tmp: Path, hub_url: str, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "XDG_CONFIG_HOME": str(tmp / "xdg"),
        "VLLAMA_CACHE_DIR": str(tmp / "cache"),
        "HF_ENDPOINT": hub_url,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        **extra,
    }
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def vllama(tmp: Path, hub_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vllama.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=tmp,
        env=_env(tmp, hub_url, **env),
        timeout=240,
        check=False,
    )


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".gitattributes" and "__pycache__" not in p.parts
    }


def _listed(tmp: Path, hub_url: str) -> dict[str, dict[str, object]]:
    res = vllama(tmp, hub_url, "list", "--json")
    assert res.returncode == 0, res.stderr
    return {m["name"]: m for m in json.loads(res.stdout)["models"]}


def test_pull_downloads_both_models_byte_for_byte(tmp_path: Path, hub: Hub) -> None:
    for repo, source in ((DEMO_REPO, demo_model_dir()), (EMBED_REPO, embed_model_dir())):
        res = vllama(tmp_path, hub.url, "pull", repo, "--json")
        assert res.returncode == 0, res.stderr
        lines = [json.loads(line) for line in res.stdout.splitlines()]
        assert lines[0] == {"status": "pulling manifest"}
        final = lines[-1]
        assert final["status"] == "success" and final["name"] == repo
        snapshot = Path(str(final["path"]))
        assert snapshot.name == repo_commit(repo)  # the hub's commit, as the Hub names it
        pulled = _files(snapshot)
        pulled.pop(".gitattributes", None)
        assert pulled == _files(source)
        weights = [e for e in lines if e.get("status") == f"pulling {WEIGHTS}"]
        assert weights[-1]["completed"] == weights[-1]["total"] == (source / WEIGHTS).stat().st_size
    listed = _listed(tmp_path, hub.url)
    assert listed[DEMO_REPO]["complete"] is True and listed[EMBED_REPO]["complete"] is True
    # What an engine is handed: the same cache, offline, no complaint.
    res = vllama(tmp_path, hub.url, "engine", "--model", EMBED_REPO, "--print", HF_HUB_OFFLINE="1")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["env"]["HF_HUB_CACHE"] == str(tmp_path / "cache")


def test_pull_shows_progress_on_a_terminal(tmp_path: Path, hub: Hub) -> None:
    with Terminal(
        [sys.executable, "-m", "vllama.cli.main", "pull", DEMO_REPO],
        _env(tmp_path, hub.url),
        tmp_path,
    ) as term:
        text = term.read_to_end(120)
        assert term.close() == 0, text
    assert f"pulling {WEIGHTS}: 100.0% of" in text and "\r" in text  # one updating line
    assert f"pulled {DEMO_REPO} into" in text


def _partial(cache: Path, repo: str) -> Path | None:
    blobs = cache / ("models--" + repo.replace("/", "--")) / "blobs"
    return next(iter(blobs.glob("*.incomplete")), None)


def test_interrupted_pull_continues_from_the_partial_file(tmp_path: Path, hub: Hub) -> None:
    cache = tmp_path / "cache"
    size = (embed_model_dir() / WEIGHTS).stat().st_size
    with hub.throttled(f"{EMBED_REPO}/resolve/", 8e6):  # 8 MB/s: slow enough to stop mid-file
        pull = procs.start(
            "vllama pull",
            [sys.executable, "-m", "vllama.cli.main", "pull", EMBED_REPO, "--json"],
            tmp_path / "pull.log",
            environ=_env(tmp_path, hub.url),
            cwd=tmp_path,
        )

        def grown() -> bool:
            part = _partial(cache, EMBED_REPO)
            return part is not None and part.stat().st_size >= 15 * 2**20

        wait_for(grown, "a partial file past 15 MiB", 120, proc=pull)
        pull.kill()  # as a crash or a lost SSH session would
    part = _partial(cache, EMBED_REPO)
    assert part is not None
    have = part.stat().st_size
    assert 15 * 2**20 <= have < size

    # Half-written: listed as incomplete, left out of the names for scripts, refused to engines.
    listed = _listed(tmp_path, hub.url)
    assert listed[EMBED_REPO]["complete"] is False
    assert EMBED_REPO not in vllama(tmp_path, hub.url, "list", "-q").stdout.split()
    table = vllama(tmp_path, hub.url, "list").stdout
    assert f"incomplete: `vllama pull {EMBED_REPO}` finishes it" in table
    refused = vllama(
        tmp_path, hub.url, "engine", "--model", EMBED_REPO, "--print", HF_HUB_OFFLINE="1"
    )
    assert refused.returncode != 0 and "only partly downloaded" in refused.stderr
    assert f"vllama pull {EMBED_REPO}" in refused.stderr

    before = len(hub.requests)
    res = vllama(tmp_path, hub.url, "pull", EMBED_REPO, "--json")
    assert res.returncode == 0, res.stderr
    weights_gets = [
        r for r in hub.requests[before:] if r.method == "GET" and r.path.endswith(f"/{WEIGHTS}")
    ]
    assert [r.range for r in weights_gets] == [f"bytes={have}-"]
    assert weights_gets[0].status == 206
    # Only the rest crossed the wire (plus the response head).
    assert size - have <= weights_gets[0].bytes < size - have + 2048
    snapshot = Path(json.loads(res.stdout.splitlines()[-1])["path"])
    digest = hashlib.sha256((snapshot / WEIGHTS).read_bytes()).hexdigest()
    assert digest == hashlib.sha256((embed_model_dir() / WEIGHTS).read_bytes()).hexdigest()
    assert _listed(tmp_path, hub.url)[EMBED_REPO]["complete"] is True
    assert _partial(cache, EMBED_REPO) is None


@pytest.mark.parametrize(
    ("repo", "token", "expected"),
    [
        (MISSING, None, [f"{MISSING} not found on", "check the name", "HF_TOKEN"]),
        (GATED, None, [f"{GATED} is gated (HTTP 401)", "accept its terms", "set HF_TOKEN"]),
        (GATED, "hf_no_access", [f"{GATED} is gated (HTTP 403)", "set HF_TOKEN"]),
    ],
    ids=["missing-model", "gated-standin-no-token", "gated-standin-token-without-access"],
)
def test_bad_models_say_what_to_do_and_leave_nothing(
    tmp_path: Path, hub: Hub, repo: str, token: str | None, expected: list[str]
) -> None:
    extra = {"HF_TOKEN": token} if token else {}
    res = vllama(tmp_path, hub.url, "pull", repo, **extra)
    assert res.returncode == 1, res.stdout + res.stderr
    error = res.stderr.strip().splitlines()[-1]  # after the progress lines
    assert error.startswith("vllama pull: "), res.stderr
    for part in expected:
        assert part in error, error
    assert "Traceback" not in res.stderr
    assert repo not in _listed(tmp_path, hub.url)


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "vllama-test", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=60)


def test_full_disk_says_how_much_is_needed_and_lists_nothing(tmp_path: Path, hub: Hub) -> None:
    with small_disk(tmp_path / "cache", "40m"):
        res = vllama(tmp_path, hub.url, "pull", EMBED_REPO)
        assert res.returncode == 1, res.stdout + res.stderr
        assert f"not enough disk space for {EMBED_REPO} in {tmp_path / 'cache'}" in res.stderr
        assert "free space there or set cache_dir (VLLAMA_CACHE_DIR)" in res.stderr
        assert EMBED_REPO not in _listed(tmp_path, hub.url)
        # The small model fits: the same cache still works.
        assert vllama(tmp_path, hub.url, "pull", DEMO_REPO).returncode == 0


def test_unreachable_hub_names_hf_endpoint(tmp_path: Path) -> None:
    res = vllama(tmp_path, f"http://127.0.0.1:{free_port()}", "pull", "org/model")
    assert res.returncode == 1
    error = res.stderr.strip().splitlines()[-1]
    assert error.startswith("vllama pull: cannot reach the model hub"), res.stderr
    assert "HF_ENDPOINT" in error and "Traceback" not in res.stderr


@pytest.mark.engine
def test_api_pull_on_a_running_facade(tmp_path: Path, hub: Hub, chat_engine: Engine) -> None:
    env = {"VLLAMA_CACHE_DIR": str(tmp_path / "cache"), "HF_ENDPOINT": hub.url}
    with (
        run_serve(["--engine", chat_engine.url], tmp_path, env=env) as serve,
        ollama.Client(host=serve.url, timeout=120) as client,
    ):
        events = list(client.pull(DEMO_REPO, stream=True))
        assert events[0].status == "pulling manifest" and events[-1].status == "success"
        weights = [e for e in events if e.status == f"pulling {WEIGHTS}"]
        size = (demo_model_dir() / WEIGHTS).stat().st_size
        assert weights[-1].completed == weights[-1].total == size
        assert weights[-1].digest and weights[-1].digest.startswith("sha256:")
        # Not streamed: one answer; the model is already there, so nothing is fetched again.
        gets = hub.bytes_served(f"{DEMO_REPO}/resolve/")
        assert client.pull(DEMO_REPO, stream=False).status == "success"
        assert hub.bytes_served(f"{DEMO_REPO}/resolve/") == gets
        with pytest.raises(ollama.ResponseError) as err:
            client.pull(MISSING, stream=False)
        assert f"{MISSING} not found on" in str(err.value) and "check the name" in str(err.value)
        # Streamed: the error is the stream's last line (the client raises it).
        with pytest.raises(ollama.ResponseError, match="is gated"):
            list(client.pull(GATED, stream=True))
    listed = _listed(tmp_path, hub.url)
    assert listed[DEMO_REPO]["complete"] is True and MISSING not in listed
