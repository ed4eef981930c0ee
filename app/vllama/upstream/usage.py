"""Token usage from the end of an engine's answer, without parsing the whole answer.

vLLM puts `usage` last in JSON bodies and in the final SSE event before [DONE], so the
last few KiB of a pass-through response are enough; embeddings bodies are large and are
never parsed in full just to count tokens.
"""

from __future__ import annotations

import json
import re

# One level of nesting allowed inside usage (`prompt_tokens_details`).
_USAGE = re.compile(rb'"usage":\s*(\{(?:[^{}]|\{[^{}]*\})*\})')
TAIL_BYTES = 8192


class UsageTail:
    """Keeps the last TAIL_BYTES of a response as it streams by."""

    __slots__ = ("tail",)

    def __init__(self) -> None:
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        if len(chunk) >= TAIL_BYTES:
            self.tail = chunk[-TAIL_BYTES:]
        else:
            self.tail = (self.tail + chunk)[-TAIL_BYTES:]

    def usage(self) -> tuple[int, int] | None:
        return usage_from_tail(self.tail)


def usage_from_tail(tail: bytes) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) of the last usage object in `tail`, if any."""
    matches = _USAGE.findall(tail)
    if not matches:
        return None
    try:
        usage = json.loads(matches[-1])
    except ValueError:
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt, completion
    return None
