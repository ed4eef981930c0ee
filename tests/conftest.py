"""Fixtures shared by every suite: real vLLM engines and the local model hub (once per
test session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.engines import Engine, engine_for, prestart
from tests.hub import Hub, start_hub

_SESSION_ENGINE_FIXTURES = {
    "chat_engine": "chat",
    "embed_engine": "embed",
    "scripted_engine": "scripted",
    "facade_url": None,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start loading the session engines the collected tests need, both at once: each takes
    a minute or more to load, and loading them one after the other doubles the wait."""
    wanted: set[str] = set()
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            if name == "facade_url":
                wanted |= {"chat", "embed"}
            elif (kind := _SESSION_ENGINE_FIXTURES.get(name)) is not None:
                wanted.add(kind)
    for kind in sorted(wanted):
        prestart(kind)


@pytest.fixture(scope="session")
def chat_engine() -> Iterator[Engine]:
    """A real vLLM engine (CPU build) serving the demo model as `vllama-demo`."""
    with engine_for("chat") as engine:
        yield engine


@pytest.fixture(scope="session")
def embed_engine() -> Iterator[Engine]:
    """A real vLLM engine serving all-MiniLM-L6-v2 (from PyPI) as `all-minilm`, 384 dims."""
    with engine_for("embed") as engine:
        yield engine


@pytest.fixture(scope="session")
def scripted_engine() -> Iterator[Engine]:
    """A real vLLM engine serving the scripted model (tests/models/scripted.py) as
    `vllama-scripted`, with the hermes tool parser and the qwen3 reasoning parser."""
    with engine_for("scripted") as engine:
        yield engine


@pytest.fixture(scope="session")
def facade_url(chat_engine: Engine, embed_engine: Engine) -> Iterator[str]:
    """The normal setup: one real façade in front of both real engines."""
    from tests.facade import run_facade

    with run_facade(
        engines=[{"url": chat_engine.url}, {"url": embed_engine.url}],
        aliases={"demo": "vllama-demo"},
        log_format="text",
    ) as url:
        yield url


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A real Hugging Face–protocol hub (olah) on 127.0.0.1 serving the demo model and
    all-MiniLM-L6-v2 (tests/hub.py); `hub.url` is the HF_ENDPOINT to download through."""
    with start_hub(tmp_path_factory.mktemp("hub")) as running:
        yield running


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop engines that were started ahead of need but never used (e.g. deselected tests)."""
    from tests.engines import stop_prestarted

    stop_prestarted()
