"""Ollama chat / generate / embed requests → the vLLM call."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vllama.translate.errors import TranslationError
from vllama.translate.fields import keep_alive_seconds
from vllama.translate.requests import (
    chat_is_load,
    chat_request,
    embed_request,
    embeddings_request,
    generate_is_load,
    generate_request,
    is_unload,
)
from vllama.translate.types import ModelTraits

PLAIN = ModelTraits(max_model_len=512, capabilities=frozenset({"completion"}))
TOOLS = ModelTraits(max_model_len=512, capabilities=frozenset({"completion", "tools"}))
THINKS = ModelTraits(max_model_len=512, capabilities=frozenset({"completion", "thinking"}))
# A 1x1 PNG and a 1x1 JPEG, whole (the façade reads their headers).
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
JPEG = (
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwc"
    "KDcpLDAxNDQ0Hyc5PTgyPC4zNDL/wAALCAABAAEBAREA/8QAFAABAAAAAAAAAAAAAAAAAAAACf/EABQQAQAAAAAAAAAA"
    "AAAAAAAAAAD/2gAIAQEAAD8AKp//2Q=="
)


def chat(**fields: Any) -> dict[str, Any]:
    return chat_request({"model": "m", **fields}, PLAIN).body


def test_chat_goes_to_chat_completions_streamed_with_usage() -> None:
    call = chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, PLAIN)
    assert call.path == "/v1/chat/completions"
    assert call.stream is True
    assert call.body["stream"] is True
    assert call.body["stream_options"] == {"include_usage": True}
    assert call.body["messages"] == [{"role": "user", "content": "hi"}]
    assert "max_tokens" not in call.body  # -1 default: up to the context, vLLM decides


def test_chat_roles_are_lower_cased_and_checked() -> None:
    assert chat(messages=[{"role": "USER", "content": "x"}])["messages"][0]["role"] == "user"
    with pytest.raises(TranslationError) as info:
        chat(messages=[{"role": "wizard", "content": "x"}])
    assert info.value.field == "messages[0].role"


def test_images_become_data_url_parts_with_the_detected_type() -> None:
    body = chat(messages=[{"role": "user", "content": "what is this", "images": [PNG, JPEG]}])
    content = body["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "what is this"}
    assert content[1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"
    assert content[2]["image_url"]["url"] == f"data:image/jpeg;base64,{JPEG}"


def test_a_damaged_image_is_a_translation_error_naming_it() -> None:
    with pytest.raises(TranslationError) as info:
        chat(messages=[{"role": "user", "content": "x", "images": [PNG, JPEG[:12]]}])
    assert info.value.field == "messages[0].images[1]"
    with pytest.raises(TranslationError) as info:
        generate_request({"model": "m", "prompt": "x", "images": ["bm90IGFuIGltYWdl"]}, PLAIN)
    assert info.value.message == '"images[0]" is not a PNG, JPEG, WebP or GIF image'


def test_the_pixel_limit_comes_from_the_traits() -> None:
    small = ModelTraits(max_image_pixels=0)
    with pytest.raises(TranslationError, match="over the limit of 0 pixels"):
        chat_request({"model": "m", "messages": [{"role": "user", "images": [PNG]}]}, small)


def test_tool_calls_object_arguments_become_strings_and_tool_name_links_the_result() -> None:
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    body = chat_request(
        {
            "model": "m",
            "tools": [tool],
            "messages": [
                {"role": "user", "content": "weather in Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                    ],
                },
                {"role": "tool", "content": "22C", "tool_name": "get_weather"},
            ],
        },
        TOOLS,
    ).body
    call = body["messages"][1]["tool_calls"][0]
    assert call["type"] == "function"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    result = body["messages"][2]
    assert result["tool_call_id"] == call["id"]
    assert result["name"] == "get_weather"
    assert body["tools"] == [tool]
    assert "tool_choice" not in body  # the engine has a tool parser: vLLM's "auto"


def test_tools_on_a_model_that_cannot_call_them_are_ollamas_400() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(TranslationError, match="does not support tools") as refused:
        chat(messages=[{"role": "user", "content": "x"}], tools=[tool])
    assert refused.value.field == "tools"


def test_an_empty_tools_list_is_not_sent() -> None:
    # ollama-python always sends `tools: []`.
    assert "tools" not in chat(messages=[{"role": "user", "content": "x"}], tools=[])


def _call(name: str, call_id: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"function": {"name": name, "arguments": {}}}
    if call_id:
        call["id"] = call_id
    return call


def test_results_without_id_or_name_answer_the_pending_calls_in_order() -> None:
    # What LangChain's ChatOllama sends through ollama-python 0.6, which drops
    # `id` and `tool_call_id`: the results follow the calls in order.
    messages = chat(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [_call("f"), _call("g")]},
            {"role": "tool", "content": "1"},
            {"role": "tool", "content": "2"},
        ]
    )["messages"]
    ids = [c["id"] for c in messages[1]["tool_calls"]]
    assert [m["tool_call_id"] for m in messages[2:]] == ids
    assert len(set(ids)) == 2


def test_two_calls_of_one_tool_get_their_own_results() -> None:
    messages = chat(
        messages=[
            {"role": "assistant", "tool_calls": [_call("f", "a"), _call("f", "b")]},
            {"role": "tool", "content": "1", "tool_name": "f"},
            {"role": "tool", "content": "2", "tool_name": "f"},
        ]
    )["messages"]
    assert [m["tool_call_id"] for m in messages[1:]] == ["a", "b"]


def test_a_result_by_name_skips_calls_of_other_tools() -> None:
    messages = chat(
        messages=[
            {"role": "assistant", "tool_calls": [_call("f", "a"), _call("g", "b")]},
            {"role": "tool", "content": "2", "tool_name": "g"},
            {"role": "tool", "content": "1"},
        ]
    )["messages"]
    assert [m["tool_call_id"] for m in messages[1:]] == ["b", "a"]


def test_explicit_tool_call_ids_are_kept() -> None:
    body = chat(
        messages=[
            {
                "role": "assistant",
                "tool_calls": [{"id": "call_abc", "function": {"name": "f", "arguments": {}}}],
            },
            {"role": "tool", "content": "1", "tool_call_id": "call_abc"},
        ]
    )
    assert body["messages"][0]["tool_calls"][0]["id"] == "call_abc"
    assert body["messages"][1]["tool_call_id"] == "call_abc"


def test_format_json_and_schema_use_response_format_never_guided_json() -> None:
    assert chat(format="json")["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = chat(format=schema)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "format", "schema": schema},
    }
    assert "guided_json" not in body
    assert "response_format" not in chat(format="")
    with pytest.raises(TranslationError) as info:
        chat(format="yaml")
    assert info.value.field == "format"


@pytest.mark.parametrize(
    ("think", "expected"),
    [
        (True, {"chat_template_kwargs": {"enable_thinking": True}}),
        (False, {"chat_template_kwargs": {"enable_thinking": False}}),
        ("high", {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "high"}),
    ],
)
def test_think_maps_to_template_switch_and_effort(think: Any, expected: dict[str, Any]) -> None:
    for translate in (chat_request, generate_request):
        body = translate({"model": "m", "prompt": "p", "think": think}, THINKS).body
        assert {k: body[k] for k in expected} == expected


def test_think_omitted_leaves_the_engine_default() -> None:
    body = chat_request({"model": "m"}, THINKS).body
    assert "chat_template_kwargs" not in body
    assert "reasoning_effort" not in body


@pytest.mark.parametrize("think", [True, "low", "high"])
def test_thinking_asked_of_a_model_that_cannot_think_is_refused_as_ollama_does(think: Any) -> None:
    for translate in (chat_request, generate_request):
        with pytest.raises(TranslationError) as info:
            translate({"model": "demo:latest", "prompt": "p", "think": think}, PLAIN)
        assert info.value.field == "think"
        assert info.value.message.startswith('"demo:latest" does not support thinking')


def test_think_false_is_accepted_by_a_model_that_cannot_think() -> None:
    assert chat(think=False)["chat_template_kwargs"] == {"enable_thinking": False}


def test_invalid_think_value_is_refused() -> None:
    with pytest.raises(TranslationError) as info:
        chat(think="extreme")
    assert info.value.field == "think"


def test_options_and_num_predict_reach_the_chat_body() -> None:
    body = chat(options={"num_predict": 12, "temperature": 0.1, "repeat_penalty": 1.1})
    assert body["max_tokens"] == 12
    assert body["temperature"] == 0.1
    assert body["repetition_penalty"] == 1.1


def test_generate_templated_is_chat_with_system_and_prompt() -> None:
    call = generate_request({"model": "m", "prompt": "Why?", "system": "Be brief."}, PLAIN)
    assert call.path == "/v1/chat/completions"
    assert call.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why?"},
    ]


def test_generate_raw_uses_completions_with_explicit_max_tokens() -> None:
    call = generate_request({"model": "m", "prompt": "abc", "raw": True, "context": [1, 2]}, PLAIN)
    assert call.path == "/v1/completions"
    assert call.body["prompt"] == "abc"
    assert call.body["max_tokens"] == 512  # -1: up to the context; vLLM's default would be 16
    call = generate_request(
        {"model": "m", "prompt": "abc", "raw": True, "options": {"num_predict": 3}}, PLAIN
    )
    assert call.body["max_tokens"] == 3


def test_generate_suffix_is_fill_in_the_middle() -> None:
    call = generate_request({"model": "m", "prompt": "def f(", "suffix": "\n    return x"}, PLAIN)
    assert call.path == "/v1/completions"
    assert call.body["suffix"] == "\n    return x"
    assert call.body["max_tokens"] == 512


def test_generate_without_a_known_context_still_caps_completions() -> None:
    call = generate_request({"model": "m", "prompt": "a", "raw": True}, ModelTraits())
    assert isinstance(call.body["max_tokens"], int)
    assert call.body["max_tokens"] > 16


def test_raw_with_system_is_refused_like_ollama() -> None:
    with pytest.raises(TranslationError) as info:
        generate_request({"model": "m", "prompt": "a", "raw": True, "system": "s"}, PLAIN)
    assert "raw mode does not support" in info.value.message


def test_load_and_unload_requests_are_recognised() -> None:
    assert chat_is_load({"model": "m", "messages": []})
    assert chat_is_load({"model": "m"})
    assert not chat_is_load({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert generate_is_load({"model": "m", "prompt": ""})
    assert not generate_is_load({"model": "m", "prompt": "x"})
    assert is_unload({"keep_alive": 0})
    assert is_unload({"keep_alive": "0s"})
    assert not is_unload({"keep_alive": "5m"})
    assert not is_unload({})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("-1", -1.0),
        ("0", 0.0),
        (-1, -1.0),
    ],
)
def test_keep_alive_numbers_and_go_durations(value: Any, seconds: float) -> None:
    assert keep_alive_seconds({"keep_alive": value}) == pytest.approx(seconds)


def test_bad_keep_alive_is_refused_naming_the_field() -> None:
    with pytest.raises(TranslationError) as info:
        keep_alive_seconds({"keep_alive": "soon"})
    assert info.value.field == "keep_alive"


def test_embed_batch_truncate_and_dimensions() -> None:
    call = embed_request({"model": "e", "input": ["a", "b"], "dimensions": 64})
    assert call.path == "/v1/embeddings"
    assert call.body == {
        "input": ["a", "b"],
        "encoding_format": "float",
        "truncate_prompt_tokens": -1,
        "dimensions": 64,
    }
    assert (
        "truncate_prompt_tokens"
        not in embed_request({"model": "e", "input": "a", "truncate": False}).body
    )
    assert embed_request({"model": "e", "input": "a"}).body["input"] == ["a"]


def test_embed_input_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TranslationError) as info:
        embed_request({"model": "e", "input": [1, 2]})
    assert info.value.field == "input"
    assert "invalid input type" in info.value.message


def test_legacy_embeddings_prompt() -> None:
    assert embeddings_request({"model": "e", "prompt": "cat"}).body["input"] == ["cat"]


def test_missing_model_and_non_object_body() -> None:
    with pytest.raises(TranslationError) as info:
        chat_request({"messages": []}, PLAIN)
    assert info.value.message == "model is required"
    with pytest.raises(TranslationError):
        chat_request([1, 2], PLAIN)
