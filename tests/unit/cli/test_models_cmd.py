"""`vllama pull | list | rm | ps | show` against a model store in a temp dir, a stand-in
hub and a small HTTP server standing in for the running façade and an engine (their real
answers are covered by tests/integration/test_cli_serve.py): what each command prints,
with --json and -q, and when rm refuses; `pull` of a local directory (compose's pull step
runs on every engine's model) is left alone."""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.procs import free_port
from tests.unit.cli.hub_standin import REPO, standin_hub
from vllama.cli import models_cmd
from vllama.cli.main import main
from vllama.cli.output import FAILED, UNREACHABLE, CliError
from vllama.config import Settings
from vllama.demo import DEMO_MODEL_NAME, MARKER_FILE

pytestmark = pytest.mark.timeout(60)

PS = {"models": [{"name": "vllama-demo:latest", "model": "vllama-demo:latest", "size": 2_500_000,
                  "context_length": 512, "expires_at": "3000-01-01T00:00:00Z"}]}  # fmt: skip
SHOW = {
    "details": {"parameter_size": "1.2M", "quantization_level": "BF16", "format": "safetensors"},
    "model_info": {"general.architecture": "llama", "llama.context_length": 512},
    "capabilities": ["completion"],
    "parameters": "temperature 0.7\ntop_p 0.9",
}
MODELS = {"data": [{"id": "served-id", "root": "/models/org--served"}]}


@pytest.fixture
def facade() -> Iterator[str]:
    """Answers /api/ps, /api/show and /v1/models as the façade and an engine would."""

    class Handler(BaseHTTPRequestHandler):
        def _json(self, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._json(PS if self.path == "/api/ps" else MODELS)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self._json(SHOW)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def settings_for(tmp: Path, url: str | None = None, **more: Any) -> Settings:
    port = int(url.rsplit(":", 1)[1]) if url else free_port()
    return Settings.model_validate({"cache_dir": tmp, "port": port, **more})


def opts(**given: object) -> argparse.Namespace:
    return argparse.Namespace(**{"json": False, "quiet": False, **given})


def demo_in(cache: Path) -> Path:
    demo = cache / DEMO_MODEL_NAME
    demo.mkdir(parents=True)
    (demo / MARKER_FILE).write_text("{}")
    (demo / "model.safetensors").write_bytes(b"w" * 2_000_000)
    return demo


def test_list_as_a_table_json_and_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo_in(tmp_path)
    settings = settings_for(tmp_path)
    models_cmd.run_list(opts(), settings, {})
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "SIZE", "FILES", "MODIFIED", "STATUS"]
    assert row.split()[:4] == ["vllama-demo", "2.0", "MB", "2"]
    assert row.endswith("just now  complete")
    models_cmd.run_list(opts(json=True), settings, {})
    [model] = json.loads(capsys.readouterr().out)["models"]
    assert (model["name"], model["kind"], model["files"]) == ("vllama-demo", "demo", 2)
    models_cmd.run_list(opts(quiet=True), settings, {})
    assert capsys.readouterr().out == "vllama-demo\n"


def test_ago_in_words() -> None:
    now = time.time()
    assert models_cmd._ago(now) == "just now"
    assert models_cmd._ago(now - 3 * 3600 - 5) == "3 hours ago"
    assert models_cmd._ago(now - 2 * 86400) == "2 days ago"


def test_ps_and_show_print_what_the_facade_says(
    tmp_path: Path, facade: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(tmp_path, facade)
    models_cmd.run_ps(opts(), settings, {})
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]  # ollama ps
    assert row.split() == ["vllama-demo:latest", "2.5", "MB", "100%", "CPU", "512", "Forever"]
    models_cmd.run_show(opts(name="demo"), settings, {})
    out = capsys.readouterr().out
    for line in ("model: demo", "architecture: llama", "context length: 512", "temperature 0.7"):
        assert line in out
    models_cmd.run_show(opts(name="demo", json=True), settings, {})
    assert json.loads(capsys.readouterr().out) == SHOW


def test_served_names_ask_the_facade_and_every_engine(tmp_path: Path, facade: str) -> None:
    settings = settings_for(tmp_path, facade, engines=[{"url": facade}])
    assert models_cmd.served_names(settings) == {
        "vllama-demo:latest",
        "served-id",
        "/models/org--served",
    }
    with pytest.raises(CliError) as exc:
        models_cmd.served_names(settings_for(tmp_path))
    assert exc.value.code == UNREACHABLE and "--force" in str(exc.value)


def test_rm_refuses_a_served_model_and_removes_an_unserved_one(
    tmp_path: Path, facade: str, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = demo_in(tmp_path)
    settings = settings_for(tmp_path, facade)
    with pytest.raises(CliError) as exc:  # the façade's /api/ps lists vllama-demo:latest
        models_cmd.run_rm(opts(name="vllama-demo", force=False), settings, {})
    assert exc.value.code == FAILED and "being served" in str(exc.value) and demo.exists()
    with pytest.raises(CliError, match="not in the local store"):
        models_cmd.run_rm(opts(name="org/absent", force=False), settings, {})
    models_cmd.run_rm(opts(name="vllama-demo", force=True, json=True), settings_for(tmp_path), {})
    assert json.loads(capsys.readouterr().out)["freed_bytes"] >= 2_000_000
    assert not demo.exists()


def test_pull_names_what_it_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    settings = settings_for(tmp_path / "cache", aliases={"tiny": REPO})
    with standin_hub(src) as (url, _):
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        models_cmd.run_pull(opts(name="tiny:latest", revision=None, json=True), settings, {})
        *progress, pulled = map(json.loads, capsys.readouterr().out.splitlines())
        assert progress and all("status" in p for p in progress)
        assert pulled["status"] == "success" and pulled["name"] == REPO
        assert (Path(pulled["path"]) / "config.json").is_file()
        with pytest.raises(CliError) as exc:
            models_cmd.run_pull(opts(name="vllama-test/gated-model", revision=None), settings, {})
    assert exc.value.code == FAILED and "HF_TOKEN" in str(exc.value)


def test_pull_of_a_local_model_directory_downloads_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any hub access would fail: the endpoint is a closed port.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("VLLAMA_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "demo"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert main(["pull", str(model)]) == 0
    assert "nothing to pull" in capsys.readouterr().out
    assert main(["pull", "--json", str(model)]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(model)
    assert not (tmp_path / "cache").exists()


def test_pull_of_a_path_without_a_model_fails_naming_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert main(["pull", str(tmp_path / "missing")]) != 0
    err = capsys.readouterr().err
    assert "no model directory there" in err and "repo id" in err
