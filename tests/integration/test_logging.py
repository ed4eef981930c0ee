"""The access log of the real façade: one JSON line per request, carrying the request id
the client got back, and never the prompt, the completion or the key."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import httpx
import ollama
import openai
import pytest

from tests.engines import Engine
from tests.facade import run_facade
from vllama.config import Settings
from vllama.observability.logging import configure_logging

pytestmark = [pytest.mark.engine, pytest.mark.timeout(180, func_only=True)]

CHAT = "vllama-demo"
KEY = "sk-logtest-d41d8cd98f"
PROMPT = "zebra quartz marmalade 7731"


@contextmanager
def logging_to(fmt: Literal["json", "text"]) -> Iterator[io.StringIO]:
    """The façade's logging set up as `vllama serve` does, into a buffer; undone after."""
    names = ("vllama", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {n: logging.getLogger(n).__dict__.copy() for n in names}
    out = io.StringIO()
    configure_logging(Settings(log_format=fmt), stream=out)
    try:
        yield out
    finally:
        for n, state in saved.items():
            logger = logging.getLogger(n)
            logger.handlers = state["handlers"]
            logger.setLevel(state["level"])
            logger.propagate = state["propagate"]
            logger.disabled = state["disabled"]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    with logging_to("json") as out:
        yield out


def access_lines(out: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    return [x for x in lines if x.get("logger") == "vllama.access"]


def test_json_access_lines(
    captured: io.StringIO, chat_engine: Engine, embed_engine: Engine
) -> None:
    with run_facade(
        engines=[{"url": chat_engine.url}, {"url": embed_engine.url}],
        api_keys=[{"name": "logtest", "key": KEY}],
    ) as url:
        auth = {"Authorization": f"Bearer {KEY}"}
        r = httpx.post(
            f"{url}/api/chat",
            json={
                "model": CHAT,
                "messages": [{"role": "user", "content": PROMPT}],
                "stream": False,
                "options": {"num_predict": 8, "seed": 4},
            },
            headers=auth,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        completion = r.json()["message"]["content"]
        with openai.OpenAI(
            base_url=f"{url}/v1",
            api_key=KEY,
            max_retries=0,
            timeout=60,
            default_headers={"X-Request-ID": "client-chosen-id-1"},
        ) as client:
            chunks = list(
                client.chat.completions.create(
                    model=CHAT,
                    messages=[{"role": "user", "content": PROMPT}],
                    max_tokens=4,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
        with (
            ollama.Client(host=url, headers={"x-api-key": KEY + "x"}) as wrong,
            pytest.raises(ollama.ResponseError),
        ):
            wrong.list()
    everything = captured.getvalue()
    lines = access_lines(captured)

    chat = [x for x in lines if x["request_id"] == r.headers["x-request-id"]]
    assert len(chat) == 1
    line = chat[0]
    assert (line["method"], line["route"], line["model"], line["status"], line["key"]) == (
        "POST",
        "/api/chat",
        CHAT,
        200,
        "logtest",
    )
    assert line["prompt_tokens"] == r.json()["prompt_eval_count"]
    assert line["completion_tokens"] == r.json()["eval_count"]
    assert line["latency_ms"] > 0 and line["client"] == "127.0.0.1"

    streamed = [x for x in lines if x["request_id"] == "client-chosen-id-1"]
    usage = chunks[-1].usage
    assert usage is not None and len(streamed) == 1
    assert streamed[0]["route"] == "/v1/chat/completions" and streamed[0]["status"] == 200
    assert streamed[0]["completion_tokens"] == usage.completion_tokens

    refused = [x for x in lines if x["status"] == 401]
    assert [(x["route"], x["key"]) for x in refused] == [("/api/tags", "anonymous")]

    assert PROMPT not in everything and KEY not in everything
    assert len(completion) < 4 or completion not in everything


def test_text_format_when_asked(chat_engine: Engine, embed_engine: Engine) -> None:
    with logging_to("text") as out, run_facade(engines=[{"url": chat_engine.url}]) as url:
        r = httpx.get(f"{url}/api/tags", timeout=10)
    line = next(
        x for x in out.getvalue().splitlines() if f"request_id={r.headers['x-request-id']}" in x
    )
    assert "vllama.access: request" in line and "route=/api/tags" in line and "status=200" in line
