"""Agents on a real engine: tool calls, thinking and images, through real clients.

The engine serves the scripted model (tests/models/scripted.py) with vLLM's hermes tool
parser and qwen3 reasoning parser; its answers are known, so every field is checked
exactly. The façade fronts it without being told what it can do: the capabilities come from
its probes. The demo engine (no parsers, text-only) is the model that cannot.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import uuid
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import ollama
import openai
import pytest
from PIL import Image

from tests.engines import Engine
from tests.facade import run_facade
from tests.models import scripted
from tests.procs import wait_for

pytestmark = [pytest.mark.engine, pytest.mark.timeout(120)]

MODEL = scripted.NAME
DEMO = "vllama-demo"
WEATHER = {
    "type": "function",
    "function": {
        "name": scripted.TOOL_NAME,
        "description": "The weather forecast for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def facade(scripted_engine: Engine, chat_engine: Engine) -> Iterator[str]:
    """A façade fronting both engines, told nothing about their capabilities."""
    with run_facade(
        engines=[{"url": scripted_engine.url}, {"url": chat_engine.url}], log_format="text"
    ) as url:
        yield url


def rid() -> str:
    return f"agents-{uuid.uuid4().hex[:12]}"


_open: list[ollama.Client | openai.OpenAI] = []  # clients a test made, closed after it


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def client(facade: str, request_id: str | None = None) -> ollama.Client:
    headers = {"X-Request-ID": request_id} if request_id else {}
    c = ollama.Client(host=facade, timeout=60, headers=headers)
    _open.append(c)
    return c


def engine_prompt(engine: Engine, request_id: str) -> str:
    """The prompt the engine rendered for the request the façade sent with `request_id`
    (vLLM's request logger, at DEBUG for that logger only: tests/engines.py)."""
    if engine.log is None:
        pytest.skip("the scripted engine was started outside this session: no log to read")
    log = engine.log
    marker = f"Request chatcmpl-{request_id} details: prompt: "

    def logged() -> str | None:
        for line in log.read_text(errors="replace").splitlines():
            if marker in line:
                return line.split(marker, 1)[1].split(", prompt_token_ids:", 1)[0]
        return None

    literal = wait_for(logged, f"the engine logging request {request_id}", 10, interval=0.2)
    prompt: str = ast.literal_eval(literal)
    return prompt


# --- capabilities --------------------------------------------------------------------------


def test_capabilities_are_detected_from_the_engines_not_configured(facade: str) -> None:
    c = client(facade)
    assert c.show(MODEL).capabilities == ["completion", "tools", "thinking", "vision"]
    assert c.show(DEMO).capabilities == ["completion"]
    listed = httpx.get(f"{facade}/api/tags", timeout=30).json()["models"]
    tags = {m["model"]: m["capabilities"] for m in listed}
    assert tags[f"{MODEL}:latest"] == ["completion", "tools", "thinking", "vision"]
    assert tags[f"{DEMO}:latest"] == ["completion"]


def test_a_configured_list_overrides_the_probes(scripted_engine: Engine) -> None:
    with run_facade(engines=[{"url": scripted_engine.url, "capabilities": ["vision"]}]) as url:
        assert client(url).show(MODEL).capabilities == ["completion", "vision"]
        # Without "tools", tools are refused as Ollama refuses them (not answered as text).
        with pytest.raises(ollama.ResponseError, match="does not support tools") as refused:
            client(url).chat(model=MODEL, messages=ASK, tools=[WEATHER])
        assert refused.value.status_code == 400


# --- tool calls ----------------------------------------------------------------------------


def test_ollama_client_receives_the_call_with_object_arguments(facade: str) -> None:
    answer = client(facade).chat(model=MODEL, messages=ASK, tools=[WEATHER])
    (call,) = answer.message.tool_calls or []
    assert call.function.name == scripted.TOOL_NAME
    assert call.function.arguments == scripted.TOOL_ARGUMENTS  # an object; days an integer
    assert answer.message.content == ""
    assert answer.done_reason == "stop"


def test_a_streamed_call_arrives_whole_in_one_chunk(facade: str) -> None:
    parts = list(client(facade).chat(model=MODEL, messages=ASK, tools=[WEATHER], stream=True))
    with_calls = [p for p in parts if p.message.tool_calls]
    assert len(with_calls) == 1  # vLLM streamed it in three fragments
    (call,) = with_calls[0].message.tool_calls or []
    assert call.function.arguments == scripted.TOOL_ARGUMENTS
    assert parts[-1].done is True and parts[-1].done_reason == "stop"
    assert "".join(p.message.content or "" for p in parts) == ""


def test_the_tool_result_reaches_the_engine_as_a_tool_message_with_the_call_id(
    facade: str, scripted_engine: Engine
) -> None:
    first = client(facade).chat(model=MODEL, messages=ASK, tools=[WEATHER])
    request_id = rid()
    history = [
        *ASK,
        first.message,
        {"role": "tool", "content": "sunny, 24 C", "tool_name": scripted.TOOL_NAME},
    ]
    second = client(facade, request_id).chat(model=MODEL, messages=history, tools=[WEATHER])
    # The template answers so only when the tool message's id names the assistant's call.
    assert second.message.content == scripted.RESULT_TEXT
    prompt = engine_prompt(scripted_engine, request_id)
    call_ids = [
        line.split('"', 2)[1] for line in prompt.split("<tool_response id=")[1:]
    ]  # what the engine received as the tool message's tool_call_id
    assert len(call_ids) == 1 and call_ids[0]
    assert f'<|im_start|>tool\n<tool_response id="{call_ids[0]}">sunny, 24 C' in prompt


def test_langchain_bind_tools_on_chat_ollama(facade: str, scripted_engine: Engine) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_ollama import ChatOllama

    request_id = rid()
    chat = ChatOllama(
        model=MODEL, base_url=facade, client_kwargs={"headers": {"X-Request-ID": request_id}}
    )
    _open.append(chat._client)  # langchain-ollama 1.1 has no close(); this is its client
    llm = chat.bind_tools([WEATHER])
    messages: list[Any] = [HumanMessage("What is the weather in Paris?")]
    ai = llm.invoke(messages)
    (call,) = ai.tool_calls
    assert call["name"] == scripted.TOOL_NAME and call["args"] == scripted.TOOL_ARGUMENTS
    messages += [ai, ToolMessage("sunny", tool_call_id=call["id"])]
    assert llm.invoke(messages).content == scripted.RESULT_TEXT
    streamed = [c for c in llm.stream(messages[:1]) if c.tool_call_chunks]
    assert [c.tool_call_chunks[0]["name"] for c in streamed] == [scripted.TOOL_NAME]
    assert json.loads(streamed[0].tool_call_chunks[0]["args"]) == scripted.TOOL_ARGUMENTS


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_gets_the_call_and_sends_the_result_by_id(
    facade: str, scripted_engine: Engine, stream: bool
) -> None:
    sdk = openai.OpenAI(base_url=f"{facade}/v1", api_key="none", timeout=60)
    _open.append(sdk)
    tools: Any = [WEATHER]
    if stream:
        name, arguments, call_id = "", "", ""
        for chunk in sdk.chat.completions.create(
            model=MODEL, messages=ASK, tools=tools, stream=True
        ):
            for frag in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                call_id = frag.id or call_id
                name += (frag.function.name or "") if frag.function else ""
                arguments += (frag.function.arguments or "") if frag.function else ""
    else:
        message = sdk.chat.completions.create(model=MODEL, messages=ASK, tools=tools)
        (call,) = message.choices[0].message.tool_calls or []
        name, arguments, call_id = call.function.name, call.function.arguments, call.id
    assert name == scripted.TOOL_NAME
    assert json.loads(arguments) == scripted.TOOL_ARGUMENTS
    request_id = rid()
    history: Any = [
        *ASK,
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "sunny"},
    ]
    reply = sdk.chat.completions.create(
        model=MODEL, messages=history, tools=tools, extra_headers={"X-Request-ID": request_id}
    )
    assert reply.choices[0].message.content == scripted.RESULT_TEXT
    assert f'<tool_response id="{call_id}">sunny' in engine_prompt(scripted_engine, request_id)


def test_a_model_without_tool_parser_refuses_tools_as_ollama(facade: str) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client(facade).chat(model=DEMO, messages=ASK, tools=[WEATHER])
    assert refused.value.status_code == 400
    assert refused.value.error.startswith(f'"{DEMO}" does not support tools')


# --- thinking ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("think", "reasoning"),
    [
        (True, scripted.REASONING["medium"]),
        ("low", scripted.REASONING["low"]),
        ("medium", scripted.REASONING["medium"]),
        ("high", scripted.REASONING["high"]),
        (False, ""),
        (None, ""),  # the engine's default: --default-chat-template-kwargs, thinking off
    ],
)
def test_thinking_and_content_arrive_apart(
    facade: str, think: Any, reasoning: str, stream: bool
) -> None:
    c = client(facade)
    if stream:
        chat = list(c.chat(model=MODEL, messages=ASK, think=think, stream=True))
        gen = list(c.generate(model=MODEL, prompt="Why?", think=think, stream=True))
        chat_thinking = "".join(p.message.thinking or "" for p in chat)
        chat_content = "".join(p.message.content or "" for p in chat)
        gen_thinking = "".join(p.thinking or "" for p in gen)
        gen_content = "".join(p.response for p in gen)
        if reasoning:  # thinking streams first, then the answer (a chunk may carry the seam)
            first_answer = next(i for i, p in enumerate(chat) if p.message.content)
            assert chat[0].message.thinking
            assert all(not p.message.thinking for p in chat[first_answer + 1 :])
    else:
        one = c.chat(model=MODEL, messages=ASK, think=think)
        two = c.generate(model=MODEL, prompt="Why?", think=think)
        chat_thinking, chat_content = one.message.thinking or "", one.message.content
        gen_thinking, gen_content = two.thinking or "", two.response
    assert (chat_thinking, chat_content) == (reasoning, scripted.ANSWER_TEXT)
    assert (gen_thinking, gen_content) == (reasoning, scripted.ANSWER_TEXT)


def test_thinking_then_a_tool_call(facade: str) -> None:
    answer = client(facade).chat(model=MODEL, messages=ASK, tools=[WEATHER], think=True)
    assert answer.message.thinking == scripted.CALL_REASONING
    (call,) = answer.message.tool_calls or []
    assert call.function.arguments == scripted.TOOL_ARGUMENTS


def test_a_model_that_cannot_think_refuses_think_as_ollama_does(facade: str) -> None:
    for think in (True, "high"):
        with pytest.raises(ollama.ResponseError) as err:
            client(facade).chat(model=DEMO, messages=ASK, think=think)
        assert err.value.status_code == 400
        assert err.value.error.startswith(f'"{DEMO}" does not support thinking')
    answer = client(facade).chat(
        model=DEMO, messages=ASK, think=False, options={"num_predict": 2, "temperature": 0}
    )
    assert answer.done and not answer.message.thinking


# --- images --------------------------------------------------------------------------------


def picture(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buf, format=fmt)
    return buf.getvalue()


def huge_png_header(side: int) -> bytes:
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    crc = (zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF).to_bytes(4, "big")
    return b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + ihdr + crc


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_images_reach_the_model(facade: str, fmt: str) -> None:
    c = client(facade)
    text_only = c.chat(model=MODEL, messages=ASK)
    image = picture(fmt)
    seen = c.chat(model=MODEL, messages=[{**ASK[0], "images": [image]}])
    assert seen.message.content == scripted.IMAGE_TEXT  # the template saw an image part
    # ... and vLLM's Idefics3 processor turned it into its image tokens (plus the wrapping
    # <fake_token_around_image><global-img>...<fake_token_around_image> and the marker).
    added = (seen.prompt_eval_count or 0) - (text_only.prompt_eval_count or 0)
    assert added == scripted.IMAGE_TOKENS + 4
    generated = c.generate(model=MODEL, prompt="What is this?", images=[image])
    assert generated.response == scripted.IMAGE_TEXT


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        (base64.b64encode(b"not a picture at all").decode(), "is not a PNG, JPEG, WebP or GIF"),
        ("%%%", "is not valid base64"),
        (base64.b64encode(picture("PNG")[:20]).decode(), "is a truncated PNG"),
        (base64.b64encode(huge_png_header(14000)).decode(), "over the limit of"),
    ],
)
def test_unusable_images_are_a_400_naming_the_image(facade: str, image: str, problem: str) -> None:
    body = {"model": MODEL, "messages": [{**ASK[0], "images": [image]}], "stream": False}
    resp = httpx.post(f"{facade}/api/chat", json=body, timeout=60)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith('"messages[0].images[0]" is ')
    assert problem in resp.json()["error"]


def test_openai_image_parts_reach_the_model_and_bombs_and_urls_do_not(facade: str) -> None:
    sdk = openai.OpenAI(base_url=f"{facade}/v1", api_key="none", timeout=60)
    _open.append(sdk)

    def ask(url: str) -> Any:
        part = {"type": "image_url", "image_url": {"url": url}}
        content: Any = [{"type": "text", "text": ASK[0]["content"]}, part]
        return sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}]
        )

    png = base64.b64encode(picture("PNG")).decode()
    assert ask(f"data:image/png;base64,{png}").choices[0].message.content == scripted.IMAGE_TEXT
    bomb = base64.b64encode(huge_png_header(14000)).decode()
    for url, problem in [
        (f"data:image/png;base64,{bomb}", "over the limit of"),  # vLLM alone: a 500
        (f"http://127.0.0.1:{urlsplit(facade).port}/health", "must be a base64 data URL"),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            ask(url)
        assert problem in err.value.message
        assert err.value.param == "messages[0].content[1].image_url"


def test_damage_past_the_header_is_the_engines_400(facade: str) -> None:
    whole = picture("JPEG", (64, 64))
    image = base64.b64encode(whole[: len(whole) // 2]).decode()
    body = {"model": MODEL, "prompt": "x", "images": [image], "stream": False}
    resp = httpx.post(f"{facade}/api/generate", json=body, timeout=60)
    assert resp.status_code == 400
    assert "image" in resp.json()["error"].lower()


def test_images_for_a_text_only_model_are_a_400(facade: str) -> None:
    image = base64.b64encode(picture("PNG")).decode()
    body = {"model": DEMO, "prompt": "x", "images": [image], "stream": False}
    resp = httpx.post(f"{facade}/api/generate", json=body, timeout=60)
    assert resp.status_code == 400
    assert "not a multimodal model" in resp.json()["error"]
