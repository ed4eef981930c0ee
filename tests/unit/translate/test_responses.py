"""vLLM SSE events and responses → Ollama objects."""

from __future__ import annotations

import re
from typing import Any

from vllama.translate.responses import (
    StreamTranslator,
    embed_response,
    embeddings_response,
    load_response,
    parse_arguments,
    rfc3339,
    rfc3339_offset,
)
from vllama.translate.types import Timings

NOW = 1_795_436_932.123456
TIMINGS = Timings(total_ns=900, load_ns=10, prompt_eval_ns=200, eval_ns=600)
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    """A chat.completion.chunk as vLLM 0.32 sends it."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "vllama-demo",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


USAGE = {"choices": [], "usage": {"prompt_tokens": 19, "completion_tokens": 3, "total_tokens": 22}}


def test_created_at_is_rfc3339_utc_with_fraction_and_z() -> None:
    assert rfc3339(NOW) == "2026-11-23T12:28:52.123456Z"
    assert CREATED_AT.match(rfc3339(0.0))
    assert rfc3339_offset(0.0) == "1970-01-01T00:00:00.000000+00:00"


def test_chat_stream_chunks_and_final_object() -> None:
    t = StreamTranslator("chat", "demo:latest")
    out = []
    for event in [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}, finish="length"),
        USAGE,
    ]:
        out.extend(t.feed(event, NOW))
    assert [c["message"]["content"] for c in out] == ["Hel", "lo"]  # no empty chunk
    assert all(c["done"] is False and c["model"] == "demo:latest" for c in out)
    assert all(c["message"]["role"] == "assistant" for c in out)
    final = t.final(TIMINGS, NOW)
    assert final == {
        "model": "demo:latest",
        "created_at": rfc3339(NOW),
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "length",
        "total_duration": 900,
        "load_duration": 10,
        "prompt_eval_count": 19,
        "prompt_eval_duration": 200,
        "eval_count": 3,
        "eval_duration": 600,
    }
    assert t.usage == (19, 3)


def test_non_streaming_answer_holds_everything() -> None:
    t = StreamTranslator("chat", "m")
    for event in [chunk({"content": "a"}), chunk({"content": "b"}, finish="stop"), USAGE]:
        t.feed(event, NOW)
    answer = t.aggregate(TIMINGS, NOW)
    assert answer["message"]["content"] == "ab"
    assert answer["done"] is True
    assert answer["done_reason"] == "stop"
    assert answer["eval_count"] == 3


def test_reasoning_and_reasoning_content_become_thinking() -> None:
    t = StreamTranslator("chat", "m")
    first = t.feed(chunk({"reasoning": "hmm"}), NOW)
    second = t.feed(chunk({"reasoning_content": " ok"}), NOW)
    assert first[0]["message"]["thinking"] == "hmm"
    assert second[0]["message"]["thinking"] == " ok"
    assert t.aggregate(TIMINGS, NOW)["message"]["thinking"] == "hmm ok"
    g = StreamTranslator("generate", "m")
    assert g.feed(chunk({"reasoning": "r"}), NOW)[0]["thinking"] == "r"


def test_streamed_tool_call_fragments_arrive_as_one_object_call_and_done_reason_stop() -> None:
    t = StreamTranslator("chat", "m")
    events = [
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({}, finish="tool_calls"),
    ]
    out = [c for e in events for c in t.feed(e, NOW)]
    assert len(out) == 1
    assert out[0]["done"] is False
    assert out[0]["message"]["tool_calls"] == [
        {
            "id": "call_1",
            "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
        }
    ]
    assert t.final(TIMINGS, NOW)["done_reason"] == "stop"


def test_tool_calls_without_finish_reason_are_flushed() -> None:
    t = StreamTranslator("chat", "m")
    t.feed(chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]}), NOW)
    flushed = t.flush(NOW)
    assert flushed[0]["message"]["tool_calls"][0]["function"]["name"] == "f"
    assert t.flush(NOW) == []


def test_arguments_parse_to_objects() -> None:
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments({"a": 1}) == {"a": 1}
    assert parse_arguments("not json") == {}
    assert parse_arguments("[1]") == {"value": [1]}


def test_generate_stream_from_completions_text_and_from_chat() -> None:
    t = StreamTranslator("generate", "m")
    out = t.feed({"choices": [{"index": 0, "text": "abc", "finish_reason": None}]}, NOW)
    assert out[0]["response"] == "abc"
    assert "message" not in out[0]
    out = t.feed(chunk({"content": "d"}, finish="stop"), NOW)
    assert out[0]["response"] == "d"
    final = t.final(TIMINGS, NOW)
    assert final["response"] == ""
    assert final["done"] is True
    assert t.aggregate(TIMINGS, NOW)["response"] == "abcd"


def test_load_and_unload_answers() -> None:
    assert load_response("chat", "m", NOW, unload=False)["done_reason"] == "load"
    unload = load_response("generate", "m", NOW, unload=True)
    assert unload["done_reason"] == "unload"
    assert unload["response"] == ""
    assert unload["done"] is True


def test_embed_response_orders_by_index_and_counts_tokens() -> None:
    upstream = {
        "data": [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}],
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    answer = embed_response(upstream, "all-minilm", TIMINGS)
    assert answer["embeddings"] == [[1.0, 0.0], [0.0, 1.0]]
    assert answer["prompt_eval_count"] == 7
    assert answer["model"] == "all-minilm"
    assert answer["total_duration"] == 900
    assert embeddings_response(upstream) == {"embedding": [1.0, 0.0]}
    assert embeddings_response({}) == {"embedding": []}
