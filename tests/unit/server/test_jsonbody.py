"""Request bodies as JSON (server/jsonbody.py): what used to end in a 500 (deep nesting,
lone surrogates) or in a message about Python's internals (4300-digit integers) is an
InvalidJson with a message for the client; anything else parses as json.loads would."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllama.server.jsonbody import MAX_DEPTH, InvalidJson, loads


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (b'{"a":' * 2000 + b"1" + b"}" * 2000, "nested deeper"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper"),
        (b'{"max_tokens": ' + b"9" * 5000 + b"}", "out of range"),
        (b'{"temperature": 1e999}', "out of range"),
        (b'{"temperature": -1e999}', "out of range"),
        (b'{"a": NaN}', "NaN is not a JSON value"),
        (b'{"a": Infinity}', "Infinity is not a JSON value"),
        (b'{"content": "\\ud800"}', "surrogate"),
        (b'{"\\udfff": 1}', "surrogate"),
        (b'["ok", ["\\uDBFF x"]]', "surrogate"),
        (b"\xff\xfe{}", "invalid JSON"),
        (b'{"a": "\xc3"}', "UTF-8"),
        (b"{", "invalid JSON"),
    ],
)
def test_refusals(raw: bytes, needle: str) -> None:
    with pytest.raises(InvalidJson) as exc:
        loads(raw)
    assert needle in exc.value.message
    assert "sys.set_int_max_str_digits" not in exc.value.message


def test_what_is_fine_parses_as_json_does() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "😀 \u2028 \x00 [[[[ \\ud800"}],
        "seed": -(2**63),
        "big": 2**64,
        "nested": json.loads("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)),  # at the limit
    }
    raw = json.dumps(body).encode()  # ensure_ascii: the emoji as a valid surrogate pair
    assert loads(raw) == body


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=200)
    | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
)
def test_any_bytes_either_parse_or_are_refused_cleanly(raw: bytes) -> None:
    try:
        value = loads(raw)
    except InvalidJson as exc:
        assert exc.message
        return
    # What parsed can be written again and sent on (the upstream request is UTF-8 JSON).
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES)
def test_valid_json_round_trips(value: object) -> None:
    for ascii_only in (True, False):
        raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
        try:
            assert loads(raw) == value
        except InvalidJson as exc:  # only a lone surrogate in the generated text
            assert "surrogate" in exc.message
