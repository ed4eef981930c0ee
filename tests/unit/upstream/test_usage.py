"""Usage read from the tail of JSON bodies and SSE streams, however they were chunked."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from vllama.upstream.usage import TAIL_BYTES, UsageTail, usage_from_tail

USAGE = {
    "prompt_tokens": 19,
    "total_tokens": 31,
    "completion_tokens": 12,
    "prompt_tokens_details": {"cached_tokens": 0},
}


def sse_stream(n_chunks: int, usage: dict[str, object] | None) -> bytes:
    events: list[dict[str, object]] = [
        {"choices": [{"delta": {"content": "x"}}], "usage": None} for _ in range(n_chunks)
    ]
    if usage is not None:
        events.append({"choices": [], "usage": usage})
    return (
        b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    )


@given(st.integers(0, 300), st.lists(st.integers(1, 5000), max_size=20))
def test_stream_usage_any_chunking(n_chunks: int, sizes: list[int]) -> None:
    wire = sse_stream(n_chunks, USAGE)
    tail = UsageTail()
    pos = 0
    for size in sizes:
        tail.feed(wire[pos : pos + size])
        pos += size
    tail.feed(wire[pos:])
    assert tail.usage() == (19, 12)
    assert len(tail.tail) <= TAIL_BYTES


def test_no_usage_when_not_asked() -> None:
    assert usage_from_tail(sse_stream(5, None)) is None


def test_embeddings_body() -> None:
    body = {
        "data": [{"embedding": [0.1] * 384, "index": 0}],
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    tail = UsageTail()
    tail.feed(json.dumps(body).encode())
    assert tail.usage() == (3, 0)
