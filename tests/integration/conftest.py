"""The normal integration setup: one façade in front of two real engines (chat + embedding)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.engines import Engine
from tests.facade import run_facade


@pytest.fixture(scope="session")
def facade_url(chat_engine: Engine, embed_engine: Engine) -> Iterator[str]:
    with run_facade(
        engines=[{"url": chat_engine.url}, {"url": embed_engine.url}],
        aliases={"demo": "vllama-demo"},
        log_format="text",
    ) as url:
        yield url
