"""Request cost (server/cost.py): bounds on messages, images and choices, and the weight
(sequences) a request counts against a key's concurrency."""

from __future__ import annotations

import pytest

from vllama.server.cost import Bounds, TooCostly, request_weight

B = Bounds(max_messages=4, max_images=2, max_choices=8)
MSG = {"role": "user", "content": "hi"}


def test_weights() -> None:
    assert request_weight("/api/chat", {"messages": [MSG]}, B) == 1
    assert request_weight("/v1/chat/completions", {"messages": [MSG], "n": 5}, B) == 5
    assert request_weight("/v1/completions", {"prompt": "x", "n": 2, "best_of": 6}, B) == 6
    assert request_weight("/v1/completions", {"prompt": ["a", "b", "c"], "n": 2}, B) == 6
    assert request_weight("/v1/completions", {"prompt": [1, 2, 3]}, B) == 1  # one token list
    assert request_weight("/v1/completions", {"prompt": [[1], [2]]}, B) == 2
    assert request_weight("/v1/embeddings", {"input": ["a"] * 100}, B) == 1
    assert request_weight("/v1/chat/completions", "not an object", B) == 1


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/api/chat", {"messages": [MSG] * 5}, "messages"),
        ("/v1/chat/completions", {"messages": [MSG] * 5}, "messages"),
        ("/api/chat", {"messages": [{**MSG, "images": ["a", "b", "c"]}]}, "images"),
        ("/api/generate", {"prompt": "x", "images": ["a", "b", "c"]}, "images"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url"}] * 3}]},
            "messages",
        ),
        ("/v1/chat/completions", {"messages": [MSG], "n": 9}, "n"),
        ("/v1/completions", {"prompt": "x", "best_of": 100}, "best_of"),
    ],
)
def test_bounds(route: str, body: dict[str, object], field: str) -> None:
    with pytest.raises(TooCostly) as exc:
        request_weight(route, body, B)
    assert exc.value.field == field and "max_" in exc.value.message
