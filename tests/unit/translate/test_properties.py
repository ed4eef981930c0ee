"""Property tests: no JSON makes a request translator raise anything but TranslationError,
and no event sequence makes a stream translator raise at all."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vllama.translate.errors import TranslationError
from vllama.translate.requests import (
    chat_request,
    embed_request,
    embeddings_request,
    generate_request,
)
from vllama.translate.responses import StreamTranslator, embed_response, embeddings_response
from vllama.translate.types import ModelTraits, Timings

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from(
    [
        "model",
        "messages",
        "prompt",
        "system",
        "suffix",
        "raw",
        "format",
        "options",
        "think",
        "tools",
        "images",
        "keep_alive",
        "stream",
        "input",
        "truncate",
        "dimensions",
        "template",
        "context",
        "role",
        "content",
        "tool_calls",
        "tool_name",
        "function",
        "arguments",
    ]
)
# Bodies shaped like Ollama requests (the right keys, anything as values), nested.
ollama_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=15,
)
options_like = st.dictionaries(
    st.sampled_from(["num_predict", "temperature", "top_k", "stop", "seed", "use_mmap", "x"]),
    json_values,
    max_size=4,
)
traits = st.builds(
    ModelTraits,
    max_model_len=st.none() | st.integers(1, 1 << 20),
    capabilities=st.frozensets(st.sampled_from(["completion", "tools", "thinking"])),
)
TRANSLATORS = (chat_request, generate_request)


def _only_translation_errors(call: Any, *args: Any) -> None:
    with contextlib.suppress(TranslationError):
        call(*args)


@settings(max_examples=150, deadline=None)
@given(body=json_values | ollama_like, model=traits)
def test_request_translators_raise_only_translation_error(body: Any, model: ModelTraits) -> None:
    for translate in TRANSLATORS:
        _only_translation_errors(translate, body, model)
    _only_translation_errors(embed_request, body)
    _only_translation_errors(embeddings_request, body)


@settings(max_examples=60, deadline=None)
@given(
    model=traits,
    messages=st.lists(st.dictionaries(keys, json_values, max_size=5), max_size=4),
    options=options_like,
    extra=st.dictionaries(keys, json_values, max_size=4),
)
def test_chat_and_generate_with_a_model_name(
    model: ModelTraits, messages: Any, options: Any, extra: dict[str, Any]
) -> None:
    body = {**extra, "model": "m", "messages": messages, "options": options, "prompt": "p"}
    for translate in TRANSLATORS:
        _only_translation_errors(translate, body, model)


events = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "choices",
                    "delta",
                    "content",
                    "text",
                    "reasoning",
                    "reasoning_content",
                    "tool_calls",
                    "index",
                    "function",
                    "name",
                    "arguments",
                    "id",
                    "finish_reason",
                    "usage",
                    "prompt_tokens",
                    "completion_tokens",
                    "message",
                    "data",
                    "embedding",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=15,
)


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(["chat", "generate"]), sequence=st.lists(events, max_size=8))
def test_stream_translators_never_raise(kind: str, sequence: list[Any]) -> None:
    t = StreamTranslator(kind, "m")
    for event in sequence:
        for obj in t.feed(event, 0.0):
            assert obj["done"] is False
    t.flush(0.0)
    assert t.final(Timings(), 0.0)["done"] is True
    assert t.aggregate(Timings(), 0.0)["done"] is True
    embed_response(sequence[0] if sequence else None, "m", Timings())
    embeddings_response(sequence[-1] if sequence else None)


@settings(max_examples=150, deadline=None)
@given(body=ollama_like, options=options_like, model=traits)
def test_what_the_parser_accepts_translates_to_a_body_an_engine_can_read(
    body: Any, options: Any, model: ModelTraits
) -> None:
    # The request path end to end, minus the network: bytes -> jsonbody.loads (the
    # middleware) -> translation -> the upstream body, which must be strict JSON (no NaN,
    # no Infinity: vLLM cannot parse them) and valid UTF-8 (no lone surrogates).
    import json

    from vllama.server.jsonbody import InvalidJson, loads

    if isinstance(body, dict):
        body = {**body, "model": "m", "options": options}
    try:
        raw = json.dumps(body).encode()
        parsed = loads(raw)
    except (InvalidJson, ValueError):
        return
    for translate in TRANSLATORS:
        try:
            call = translate(parsed, model)
        except TranslationError:
            continue
        json.dumps(call.body, allow_nan=False, ensure_ascii=False).encode("utf-8")
    for embed in (embed_request, embeddings_request):
        try:
            call = embed(parsed)
        except TranslationError:
            continue
        json.dumps(call.body, allow_nan=False, ensure_ascii=False).encode("utf-8")
