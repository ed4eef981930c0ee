"""What one inference request may ask for, and how many sequences it costs.

Bounds (400 above them, in the API's shape): `max_messages` chat messages, `max_images`
images, `max_choices` for `n` / `best_of`. The body's size is bounded before this
(`max_body_bytes`). The weight, the number of sequences an engine will generate at once
(`n` or `best_of`, times the prompts of a batched /v1/completions), is what a key's
`max_concurrency` counts: a key limited to 4 cannot ask for n=16 in one request.

Pure: no I/O; `body` is the parsed JSON object (anything else is left to the routes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Bounds:
    max_messages: int
    max_images: int
    max_choices: int


class TooCostly(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def _count_images_openai(content: Any) -> int:
    if not isinstance(content, list):
        return 0
    return sum(
        1
        for part in content
        if isinstance(part, dict) and part.get("type") in ("image_url", "input_image", "image")
    )


def _choices(body: dict[str, Any], bounds: Bounds) -> int:
    most = 1
    for field in ("n", "best_of"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            if value > bounds.max_choices:
                raise TooCostly(
                    f"field '{field}' asks for {value} choices; at most {bounds.max_choices} "
                    "per request (max_choices)",
                    field,
                )
            most = max(most, value)
    return most


def _batch(prompt: Any) -> int:
    """Prompts in a /v1/completions `prompt`: a string or token list is one."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        return len(prompt)
    return 1


def request_weight(route: str, body: Any, bounds: Bounds) -> int:
    """Sequences this request makes an engine generate; TooCostly beyond the bounds."""
    if not isinstance(body, dict):
        return 1
    messages = body.get("messages")
    images = 0
    if isinstance(messages, list):
        if len(messages) > bounds.max_messages:
            raise TooCostly(
                f"{len(messages)} messages in one request; at most {bounds.max_messages} "
                "(max_messages): shorten the conversation",
                "messages",
            )
        for message in messages:
            if not isinstance(message, dict):
                continue
            ollama_images = message.get("images")
            if isinstance(ollama_images, list):
                images += len(ollama_images)
            images += _count_images_openai(message.get("content"))
    top_images = body.get("images")
    if isinstance(top_images, list):
        images += len(top_images)
    if images > bounds.max_images:
        raise TooCostly(
            f"{images} images in one request; at most {bounds.max_images} (max_images)",
            "images" if route.startswith("/api/") else "messages",
        )
    if not route.startswith("/v1/"):
        return 1
    weight = _choices(body, bounds)
    if route == "/v1/completions":
        weight *= _batch(body.get("prompt"))
    return weight
