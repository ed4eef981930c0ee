"""OpenAI responses and SSE events → Ollama objects. Never raises: engines' odd events are skipped."""

from __future__ import annotations

import functools
import json
import math
from datetime import datetime, timezone
from typing import Any

from vllama.translate.types import Timings


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    return datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def rfc3339(unix: float) -> str:
    """created_at as Ollama writes it: UTC, microseconds, `Z` (one strftime per second:
    every streamed chunk carries one)."""
    second = math.floor(unix)
    micros = min(int((unix - second) * 1_000_000), 999_999)
    return f"{_utc_second(second)}.{micros:06d}Z"


def rfc3339_offset(unix: float) -> str:
    """modified_at / expires_at: `+00:00` rather than `Z`, which Python < 3.11 cannot parse."""
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="microseconds")


def done_reason(finish_reason: Any) -> str:
    """vLLM's finish_reason → Ollama's: only `length` differs from `stop` (tool_calls → stop)."""
    return "length" if finish_reason == "length" else "stop"


def parse_arguments(raw: Any) -> dict[str, Any]:
    """vLLM's JSON-string arguments → the object Ollama clients require ({} if unparsable)."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw.strip():
        try:
            value = json.loads(raw)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {"value": value}
    return {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _ToolCallBuffer:
    """Streamed tool-call fragments (by index) joined into whole calls."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, fragments: Any) -> None:
        if not isinstance(fragments, list):
            return
        for pos, frag in enumerate(fragments):
            if not isinstance(frag, dict):
                continue
            index = _int(frag.get("index"))
            index = pos if index is None else index
            call = self._calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
            if isinstance(frag.get("id"), str):
                call["id"] = frag["id"]
            fn = frag.get("function")
            if isinstance(fn, dict):
                if isinstance(fn.get("name"), str):
                    call["name"] += fn["name"]
                args = fn.get("arguments")
                if isinstance(args, str):
                    call["arguments"] += args
                elif isinstance(args, dict):
                    call["arguments"] = json.dumps(args)

    def take(self) -> list[dict[str, Any]]:
        """The complete calls in Ollama's shape, emptying the buffer."""
        out = []
        for index in sorted(self._calls):
            call = self._calls[index]
            item: dict[str, Any] = {
                "function": {
                    "index": index,
                    "name": call["name"],
                    "arguments": parse_arguments(call["arguments"]),
                }
            }
            if call["id"]:
                item["id"] = call["id"]
            out.append(item)
        self._calls.clear()
        return out


class StreamTranslator:
    """One upstream stream → Ollama chunks; `final` builds the `done: true` object.

    `kind` is "chat" (message objects) or "generate" (response strings). `feed` takes one
    parsed SSE event from /v1/chat/completions or /v1/completions; `aggregate` is the
    non-streaming answer (everything in one object).
    """

    def __init__(self, kind: str, model: str) -> None:
        self.kind = kind
        self.model = model
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.finish_reason: Any = None
        self._content: list[str] = []
        self._thinking: list[str] = []
        self._tools = _ToolCallBuffer()
        self._tool_calls: list[dict[str, Any]] = []
        self._stamp_of = -1.0
        self._stamp = ""

    def _created_at(self, now: float) -> str:
        if now != self._stamp_of:  # events of one network read share a clock reading
            self._stamp_of, self._stamp = now, rfc3339(now)
        return self._stamp

    def _chunk(
        self, now: float, text: str, thinking: str, calls: list[dict[str, Any]]
    ) -> dict[str, Any]:
        obj: dict[str, Any] = {"model": self.model, "created_at": self._created_at(now)}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            obj["message"] = message
        else:
            obj["response"] = text
            if thinking:
                obj["thinking"] = thinking
        obj["done"] = False
        return obj

    def feed(self, event: Any, now: float) -> list[dict[str, Any]]:
        """Ollama chunks for one upstream event (often one, sometimes none)."""
        if not isinstance(event, dict):
            return []
        usage = event.get("usage")
        if isinstance(usage, dict):
            prompt, completion = (
                _int(usage.get("prompt_tokens")),
                _int(usage.get("completion_tokens")),
            )
            if prompt is not None:
                self.prompt_tokens = prompt
            if completion is not None:
                self.completion_tokens = completion
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return []
        choice = choices[0]
        delta: dict[str, Any] = {}
        for key in ("delta", "message"):  # streamed chunks carry delta, whole answers message
            if isinstance(choice.get(key), dict):
                delta = choice[key]
                break
        text = delta.get("content") if "text" not in choice else choice.get("text")
        text = text if isinstance(text, str) else ""
        thinking = delta.get("reasoning")
        if not isinstance(thinking, str):
            thinking = delta.get("reasoning_content")
        thinking = thinking if isinstance(thinking, str) else ""
        fragments = delta.get("tool_calls")
        if fragments is not None:
            self._tools.add(fragments)
        calls: list[dict[str, Any]] = []
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice.get("finish_reason")
            calls = self._tools.take()  # whole calls only: Ollama sends parsed objects
            self._tool_calls.extend(calls)
        self._content.append(text)
        self._thinking.append(thinking)
        if not (text or thinking or calls):
            return []
        return [self._chunk(now, text, thinking, calls)]

    def flush(self, now: float) -> list[dict[str, Any]]:
        """Tool calls still buffered when the stream ended without a finish_reason."""
        calls = self._tools.take()
        self._tool_calls.extend(calls)
        return [self._chunk(now, "", "", calls)] if calls else []

    @property
    def usage(self) -> tuple[int, int]:
        return (self.prompt_tokens or 0, self.completion_tokens or 0)

    def _metrics(self, timings: Timings) -> dict[str, Any]:
        prompt, completion = self.usage
        return {
            "done": True,
            "done_reason": done_reason(self.finish_reason),
            "total_duration": max(0, timings.total_ns),
            "load_duration": max(0, timings.load_ns),
            "prompt_eval_count": prompt,
            "prompt_eval_duration": max(0, timings.prompt_eval_ns),
            "eval_count": completion,
            "eval_duration": max(0, timings.eval_ns),
        }

    def final(self, timings: Timings, now: float) -> dict[str, Any]:
        """The streamed `done: true` object (empty content, all the figures)."""
        obj = self._chunk(now, "", "", [])
        obj.update(self._metrics(timings))
        return obj

    def aggregate(self, timings: Timings, now: float) -> dict[str, Any]:
        """The non-streaming answer: everything generated, in one `done: true` object."""
        obj = self._chunk(now, "".join(self._content), "".join(self._thinking), self._tool_calls)
        obj.update(self._metrics(timings))
        return obj


def load_response(kind: str, model: str, now: float, *, unload: bool) -> dict[str, Any]:
    """The answer to an empty chat/generate (Ollama's load / unload request)."""
    obj: dict[str, Any] = {"model": model, "created_at": rfc3339(now)}
    if kind == "chat":
        obj["message"] = {"role": "assistant", "content": ""}
    else:
        obj["response"] = ""
    obj["done"] = True
    obj["done_reason"] = "unload" if unload else "load"
    return obj


def _vectors(response: Any) -> list[list[float]]:
    data = response.get("data") if isinstance(response, dict) else None
    if not isinstance(data, list):
        return []
    items = [d for d in data if isinstance(d, dict) and isinstance(d.get("embedding"), list)]
    items.sort(key=lambda d: _int(d.get("index")) or 0)
    return [d["embedding"] for d in items]


def embed_response(response: Any, model: str, timings: Timings) -> dict[str, Any]:
    """/v1/embeddings → POST /api/embed's answer."""
    usage = response.get("usage") if isinstance(response, dict) else None
    prompt = _int(usage.get("prompt_tokens")) if isinstance(usage, dict) else None
    return {
        "model": model,
        "embeddings": _vectors(response),
        "total_duration": max(0, timings.total_ns),
        "load_duration": max(0, timings.load_ns),
        "prompt_eval_count": prompt or 0,
    }


def embeddings_response(response: Any) -> dict[str, Any]:
    """/v1/embeddings → legacy POST /api/embeddings' answer (`embedding` only)."""
    vectors = _vectors(response)
    return {"embedding": vectors[0] if vectors else []}


def embed_usage(response: Any) -> int:
    usage = response.get("usage") if isinstance(response, dict) else None
    return (_int(usage.get("prompt_tokens")) or 0) if isinstance(usage, dict) else 0
