"""`vllama serve --engine URL` as a real subprocess in front of a real engine: the ollama
client talks to it, `vllama ps/show/rm` ask it, and SIGTERM drains it — streams that are
in flight finish, new connections are refused, then the process exits and frees its port."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.engines import Engine
from tests.procs import wait_for
from tests.unit.cli.serve_proc import Serve, port_free, run_serve
from vllama.engine import demo_model

pytestmark = [pytest.mark.engine, pytest.mark.timeout(300)]


def cli(
    serve: Serve, tmp: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vllama.cli.main", *args, "--port", str(serve.port)],
        capture_output=True,
        text=True,
        cwd=tmp,
        env={"PATH": "/usr/bin:/bin", "XDG_CONFIG_HOME": str(tmp / "xdg"), **(env or {})},
        timeout=60,
    )


def stream_chat(url: str, results: list[dict[str, Any]], started: threading.Event) -> None:
    body = {
        "model": "vllama-demo",
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "options": {"num_predict": 300, "seed": 1},
    }
    lines: list[dict[str, Any]] = []
    try:
        with httpx.stream("POST", f"{url}/api/chat", json=body, timeout=60) as resp:
            for line in resp.iter_lines():
                if line:
                    lines.append(json.loads(line))
                    started.set()
        results.append({"lines": lines, "ended": time.monotonic()})
    except Exception as exc:  # recorded; the test asserts there is none
        results.append({"lines": lines, "error": repr(exc), "ended": time.monotonic()})


# What a façade under sigterm_during_streams needs: after SIGTERM it still takes new
# requests for 2 s (as behind a gateway), so the streams a test started just before are
# all accepted, whichever of them reached it first.
DRAIN_DELAY = {"VLLAMA_DRAIN_DELAY_S": "2"}


def sigterm_during_streams(serve: Serve, n: int = 4) -> tuple[list[dict[str, Any]], float]:
    """Start n streams, SIGTERM `serve` (started with DRAIN_DELAY) as soon as one flows;
    return results and the time. Not "once all are flowing": the CPU engine sends the first
    chunks of concurrent streams seconds apart here, and all four 300-token streams had
    ended before the fourth's first line in one CI run."""
    results: list[dict[str, Any]] = []
    flowing = [threading.Event() for _ in range(n)]
    threads = [
        threading.Thread(target=stream_chat, args=(serve.url, results, ev)) for ev in flowing
    ]
    for t in threads:
        t.start()
    wait_for(lambda: any(ev.is_set() for ev in flowing), "a stream flowing", 60, interval=0.001)
    sent = time.monotonic()
    serve.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(90)
    return results, sent


def refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.TransportError:
        return True
    return False


def assert_streams_completed(results: list[dict[str, Any]], n: int) -> None:
    assert len(results) == n
    for r in results:
        assert "error" not in r, r.get("error")
        assert r["lines"][-1]["done"] is True, r["lines"][-1]
        assert all("error" not in line for line in r["lines"])


def test_serve_engine_url(chat_engine: Engine, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    demo = cache / demo_model.DEMO_MODEL_NAME
    demo.mkdir(parents=True)
    (demo / "vllama-demo.json").write_text(json.dumps({"fingerprint": demo_model._fingerprint()}))
    with (
        run_serve(
            ["--engine", chat_engine.url],
            tmp_path,
            env={"VLLAMA_DRAIN_TIMEOUT_S": "60", **DRAIN_DELAY},
        ) as serve,
        ollama.Client(host=serve.url) as client,
    ):
        reply = client.chat(
            model="vllama-demo",
            messages=[{"role": "user", "content": "hi"}],
            options={"num_predict": 8},
        )
        assert reply.message.content and reply.eval_count == 8

        ps = cli(serve, tmp_path, "ps", "--json")
        assert ps.returncode == 0, ps.stderr
        assert [m["name"] for m in json.loads(ps.stdout)["models"]] == ["vllama-demo:latest"]
        assert cli(serve, tmp_path, "ps", "-q").stdout.split() == ["vllama-demo:latest"]

        show = cli(serve, tmp_path, "show", "vllama-demo", "--json")
        assert show.returncode == 0, show.stderr
        assert json.loads(show.stdout)["model_info"]["general.architecture"] == "llama"
        missing = cli(serve, tmp_path, "show", "no-such-model")
        assert missing.returncode == 1 and "not found" in missing.stderr

        # rm asks the running façade and refuses what an engine serves.
        rm = cli(serve, tmp_path, "rm", "vllama-demo", env={"VLLAMA_CACHE_DIR": str(cache)})
        assert rm.returncode == 1 and "being served" in rm.stderr
        assert demo.exists()

        results, sent = sigterm_during_streams(serve)
        # Soon after SIGTERM (uvicorn acts on it at its next 0.1 s tick, and the tiny model's
        # streams may all be over by then) the listening socket is closed: new clients are
        # refused, whether the façade is still draining or already gone.
        wait_for(lambda: refused(f"{serve.url}/health"), "connections refused after SIGTERM", 10)
        assert serve.proc.wait(90) == 0
        assert_streams_completed(results, 4)
        assert max(r["ended"] for r in results) > sent  # they really were in flight
        assert port_free(serve.port)
    assert "Shutting down" in serve.text()


def test_rm_removes_an_unserved_model(chat_engine: Engine, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    demo = cache / demo_model.DEMO_MODEL_NAME
    demo.mkdir(parents=True)
    (demo / "model.safetensors").write_bytes(b"w" * 5000)
    (demo / "vllama-demo.json").write_text(json.dumps({"fingerprint": demo_model._fingerprint()}))
    env = {"VLLAMA_CACHE_DIR": str(cache)}
    with run_serve(["--engine", chat_engine.url], tmp_path) as serve:
        listed = cli(serve, tmp_path, "list", "--json", env=env)
        assert [m["name"] for m in json.loads(listed.stdout)["models"]] == ["vllama-demo"]
        # Served under the same name: refused. The façade answering is what rm checks.
        assert cli(serve, tmp_path, "rm", "vllama-demo", env=env).returncode == 1
    # No façade answers now: rm will not guess, unless forced.
    gone = subprocess.run(
        [sys.executable, "-m", "vllama.cli.main", "rm", "vllama-demo", "--port", str(serve.port), "--json"],
        capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env}, timeout=60,
    )  # fmt: skip
    assert gone.returncode == 4 and "--force" in gone.stderr
    forced = subprocess.run(
        [sys.executable, "-m", "vllama.cli.main", "rm", "vllama-demo", "--force", "--json"],
        capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env}, timeout=60,
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["freed_bytes"] >= 5000
    assert not demo.exists()


def test_api_pull_and_delete_go_through_the_model_store(
    chat_engine: Engine, tmp_path: Path
) -> None:
    """ollama.pull / ollama.delete against `vllama serve`, with a STAND-IN hub (the real one
    is unreachable here): progress in Ollama's shape, then the files are in the cache."""
    from tests.unit.cli.hub_standin import GATED, REPO, standin_hub

    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (src / "model.safetensors").write_bytes(b"\x01" * 150_000)
    cache = tmp_path / "cache"
    with standin_hub(src) as (hub_url, _):
        env = {"HF_ENDPOINT": hub_url, "VLLAMA_CACHE_DIR": str(cache)}
        with (
            run_serve(["--engine", chat_engine.url], tmp_path, env=env) as serve,
            ollama.Client(host=serve.url) as client,
        ):
            events = list(client.pull(REPO, stream=True))
            assert events[0].status == "pulling manifest" and events[-1].status == "success"
            files = {e.status: e for e in events if e.digest}
            assert files["pulling model.safetensors"].completed == 150_000
            assert files["pulling model.safetensors"].total == 150_000
            assert any(cache.glob("models--*/snapshots/*/model.safetensors"))

            with pytest.raises(ollama.ResponseError) as err:
                list(client.pull(GATED, stream=True))
            assert "gated" in str(err.value) and "HF_TOKEN" in str(err.value)

            client.delete(REPO)
            assert not any(cache.glob("models--*/snapshots/*/model.safetensors"))
            with pytest.raises(ollama.ResponseError) as err:
                client.delete(REPO)
            assert err.value.status_code == 404


def test_api_delete_never_removes_files_an_unreachable_engine_may_serve(
    chat_engine: Engine, tmp_path: Path
) -> None:
    """Issue 13 (data loss): /api/delete asked only the live engines whether a model was in
    use, and removed the files of one whose engine was down. An engine that never answered
    may serve anything in the store: delete refuses (409) and the files stay; once every
    engine is known, a model none of them loads is deleted."""
    from tests.engines import free_port
    from tests.unit.cli.hub_standin import REPO, standin_hub

    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (src / "model.safetensors").write_bytes(b"\x01" * 50_000)
    cache = tmp_path / "cache"
    weights = "models--*/snapshots/*/model.safetensors"
    dead = f"http://127.0.0.1:{free_port()}"  # configured, down (say, restarting)
    with standin_hub(src) as (hub_url, _):
        env = {"HF_ENDPOINT": hub_url, "VLLAMA_CACHE_DIR": str(cache)}
        args = ["--engine", chat_engine.url, "--engine", dead]
        with (
            run_serve(args, tmp_path, env=env) as serve,
            ollama.Client(host=serve.url) as client,
        ):
            assert list(client.pull(REPO, stream=True))[-1].status == "success"
            with pytest.raises(ollama.ResponseError) as err:
                client.delete(REPO)
            assert err.value.status_code == 409 and "in use" in str(err.value)
            assert any(cache.glob(weights)), "the files of a possibly served model are gone"
        # Every engine known (the dead one no longer configured): the unserved model goes.
        with (
            run_serve(["--engine", chat_engine.url], tmp_path, env=env) as serve,
            ollama.Client(host=serve.url) as client,
        ):
            client.delete(REPO)
            assert not any(cache.glob(weights))
