"""Liveness and readiness against the normal setup (one façade, two real engines)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.engines import Engine

# func_only: the engine fixtures have deadlines of their own (minutes on a busy box).
pytestmark = [pytest.mark.engine, pytest.mark.timeout(60, func_only=True)]


def test_liveness(facade_url: str) -> None:
    r = httpx.get(f"{facade_url}/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_readiness_lists_engines_models_gpus(
    facade_url: str, chat_engine: Engine, embed_engine: Engine
) -> None:
    r = httpx.get(f"{facade_url}/health/ready", timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    engines = {e["url"]: e for e in body["engines"]}
    assert engines[chat_engine.url]["models"] == ["vllama-demo"]
    assert engines[embed_engine.url]["models"] == ["all-minilm"]
    assert all(e["healthy"] and e["breaker"] == "closed" for e in engines.values())
    assert {m["id"]: m["ready"] for m in body["models"]} == {
        "vllama-demo": True,
        "all-minilm": True,
    }
    assert isinstance(body["gpus"], list)
    assert body["gpus"] or body["gpu_note"]  # this machine has no GPU: a reason, not an error
    assert body["uptime_s"] > 0 and body["version"]


def test_health_needs_no_key(chat_engine: Engine) -> None:
    from tests.facade import run_facade

    with run_facade(
        engines=[{"url": chat_engine.url}], api_keys=[{"key": "k1", "name": "a"}]
    ) as url:
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{url}/health/ready", timeout=10).status_code == 200


def test_drain_file_turns_readiness_503_and_back(chat_engine: Engine, tmp_path: Path) -> None:
    """The documented drain control (a rolling upgrade touches it): readiness says
    "draining" while `<state_dir>/draining` exists, liveness and requests still answer."""
    from tests.facade import run_facade

    with run_facade(engines=[{"url": chat_engine.url}], state_dir=tmp_path) as url:
        assert httpx.get(f"{url}/health/ready", timeout=10).status_code == 200
        (tmp_path / "draining").touch()
        r = httpx.get(f"{url}/health/ready", timeout=10)
        assert r.status_code == 503 and r.json()["status"] == "draining"
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{url}/api/tags", timeout=10).status_code == 200  # still serving
        (tmp_path / "draining").unlink()
        assert httpx.get(f"{url}/health/ready", timeout=10).json()["status"] == "ready"


def test_readiness_without_a_key_says_ready_or_not_and_nothing_more(chat_engine: Engine) -> None:
    # Issue 13: unauthenticated /health/ready showed engine URLs and model ids.
    from tests.facade import run_facade

    with run_facade(
        engines=[{"url": chat_engine.url}], api_keys=[{"key": "sk-ready-k1", "name": "a"}]
    ) as url:
        anonymous = httpx.get(f"{url}/health/ready", timeout=10)
        wrong = httpx.get(f"{url}/health/ready", headers={"x-api-key": "nope"}, timeout=10)
        keyed = httpx.get(
            f"{url}/health/ready", headers={"Authorization": "Bearer sk-ready-k1"}, timeout=10
        )
    assert anonymous.status_code == wrong.status_code == keyed.status_code == 200
    assert anonymous.json() == wrong.json() == {"status": "ready"}
    assert chat_engine.url not in anonymous.text and "vllama-demo" not in anonymous.text
    details = keyed.json()
    assert details["status"] == "ready" and details["engines"][0]["url"] == chat_engine.url
