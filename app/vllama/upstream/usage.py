"""Token usage from the end of an engine's answer, without parsing the whole answer.

vLLM puts `usage` last in JSON bodies and in the final SSE event before [DONE], so the
last few KiB of a pass-through response are enough; embeddings bodies are large and are
never parsed in full just to count tokens.
"""

from __future__ import annotations

import re
from collections import deque

from vllama import fastjson

# One level of nesting allowed inside usage (`prompt_tokens_details`).
_USAGE = re.compile(rb'"usage":\s*(\{(?:[^{}]|\{[^{}]*\})*\})')
TAIL_BYTES = 8192


class UsageTail:
    """Keeps at least the last TAIL_BYTES of a response as it streams by.

    Chunks are kept as they came and dropped once the newer ones cover TAIL_BYTES, so a
    chunk costs an append, not a copy of the whole tail.
    """

    __slots__ = ("_chunks", "_size")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._chunks[0]) >= TAIL_BYTES:
            self._size -= len(self._chunks.popleft())

    @property
    def tail(self) -> bytes:
        """The last TAIL_BYTES (or fewer: all there was)."""
        return b"".join(self._chunks)[-TAIL_BYTES:]

    def usage(self) -> tuple[int, int] | None:
        return usage_from_tail(self.tail)


def usage_from_tail(tail: bytes) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) of the last usage object in `tail`, if any."""
    matches = _USAGE.findall(tail)
    if not matches:
        return None
    try:
        usage = fastjson.loads(matches[-1])
    except ValueError:
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt, completion
    return None
