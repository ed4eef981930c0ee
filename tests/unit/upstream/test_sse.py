"""The SSE decoder gives the same events however the network splits the bytes."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from vllama.upstream.sse import SSEDecoder


def decode(chunks: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    out: list[str] = []
    for chunk in chunks:
        out.extend(data.decode() for data in decoder.feed(chunk))
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for p in points:
        pieces.append(data[start:p])
        start = p
    pieces.append(data[start:])
    return pieces


payloads = st.lists(
    st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3), min_size=1, max_size=6
)


@given(
    payloads, st.lists(st.integers(0, 10_000), max_size=30), st.sampled_from(["\n", "\r\n", "\r"])
)
def test_any_split_decodes_identically(
    objs: list[dict[str, str]], cuts: list[int], eol: str
) -> None:
    # ensure_ascii=False: multi-byte UTF-8 characters get cut mid-sequence too.
    events = [json.dumps(o, ensure_ascii=False) for o in objs] + ["[DONE]"]
    wire = "".join(f"data: {e}{eol}{eol}" for e in events).encode()
    assert decode([wire]) == events
    assert decode(split(wire, cuts)) == events
    assert decode([wire[i : i + 1] for i in range(len(wire))]) == events


def test_comments_other_fields_and_multiline_data() -> None:
    wire = b": keep-alive\nevent: x\nid: 1\ndata: a\ndata:b\n\ndata: c\n"
    assert decode([wire]) == ["a\nb"]  # the last event is incomplete: no blank line yet
    assert decode([wire, b"\n"]) == ["a\nb", "c"]


def test_blank_lines_without_data_yield_nothing() -> None:
    assert decode([b"\n\n: ping\n\n"]) == []


def test_whole_event_split_agrees_with_the_line_by_line_path_at_every_cut() -> None:
    # LF-only input takes a faster path for whole events; any cut must decode the same.
    wire = (
        b": ping\n\ndata: a\n\ndata: b1\ndata: b2\n\nevent: x\ndata: c\n\n\n\n"
        b"data:d\n\ndata: \xc3\xa9\n\nid: 7\n\ndata: [DONE]\n\n"
    )
    expected = ["a", "b1\nb2", "c", "d", "é", "[DONE]"]
    assert decode([wire]) == expected
    for cut in range(len(wire) + 1):
        assert decode([wire[:cut], wire[cut:]]) == expected, cut
    for a in range(0, len(wire), 7):
        for b in range(a, len(wire), 5):
            assert decode([wire[:a], wire[a:b], wire[b:]]) == expected, (a, b)
