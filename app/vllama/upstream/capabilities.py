"""What an engine can do beyond generating text: `tools`, `thinking`, `vision`, detected.

vLLM does not report its tool-call or reasoning parser, nor whether the model reads images.
For engines vllama starts, their command line says (engine/launch.py). For engines it only
fronts, three small requests at discovery ask the engine itself; read from vLLM 0.32's
serving code (renderers/online_renderer.py, chat_completion/serving.py) and measured there
(docs/api-compatibility.md, "Capabilities"):

- tools: `tools` with `tool_choice: "auto"` and `max_tokens: 0`. Without
  `--enable-auto-tool-choice --tool-call-parser` vLLM refuses before rendering
  (`"auto" tool choice requires ...`); with them it renders the prompt, then refuses
  `max_tokens: 0`. Nothing is generated.
- vision: a 1x1 PNG with `max_tokens: 0`. A text-only model is refused as
  `... is not a multimodal model`; a vision model runs its image processor on the pixel, then
  refuses `max_tokens: 0`. Nothing is generated.
- thinking: one generated token. vLLM adds `usage.completion_tokens_details` only when it
  runs a reasoning parser.

Each probe that cannot tell (connection error, an answer of another shape) leaves its
capability unknown (None), and the caller retries at the next discovery.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

# A 1x1 PNG: the smallest image every vision processor takes.
PIXEL_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
_NO_AUTO_TOOLS = "--enable-auto-tool-choice"
_NOT_MULTIMODAL = "is not a multimodal model"
_ZERO_TOKENS = "max_tokens"  # "max_tokens must be at least 1, got 0."
_PROBE_TOOL = {
    "type": "function",
    "function": {"name": "vllama_probe", "parameters": {"type": "object", "properties": {}}},
}


@dataclass(frozen=True)
class Probe:
    name: str  # the capability it answers
    body: dict[str, Any]


def probes(model: str) -> list[Probe]:
    hello = [{"role": "user", "content": "hi"}]
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL_PNG}"}},
            ],
        }
    ]
    return [
        Probe(
            "tools",
            {
                "model": model,
                "messages": hello,
                "tools": [_PROBE_TOOL],
                "tool_choice": "auto",
                "max_tokens": 0,
            },
        ),
        Probe("vision", {"model": model, "messages": image, "max_tokens": 0}),
        Probe("thinking", {"model": model, "messages": hello, "max_tokens": 1}),
    ]


def _message(answer: Any) -> str:
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or "")
    return str(error or "")


def verdict(name: str, status: int, answer: Any) -> bool | None:
    """What one probe's answer says: True, False, or None when it cannot tell."""
    if name == "thinking":
        if status != 200 or not isinstance(answer, dict):
            return None
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return None
        return isinstance(usage.get("completion_tokens_details"), dict)
    if status != 400:  # both outcomes are refusals; anything else is not understood
        return None
    message = _message(answer)
    refusal = {"tools": _NO_AUTO_TOOLS, "vision": _NOT_MULTIMODAL}.get(name)
    if refusal is None:
        return None
    if refusal in message:
        return False
    # The capability is there only if the request got as far as its token budget.
    return True if _ZERO_TOKENS in message else None


@dataclass(frozen=True)
class Detected:
    """Probe results: capability → True / False / None (unknown)."""

    results: Mapping[str, bool | None]

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(name for name, found in self.results.items() if found)

    @property
    def complete(self) -> bool:
        return all(found is not None for found in self.results.values())


async def detect(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    headers: Mapping[str, str],
    timeout: float,
) -> Detected:
    """Ask the engine at `url`, serving `model`, what it can do (three requests)."""
    results: dict[str, bool | None] = {}
    for probe in probes(model):
        try:
            async with session.post(
                f"{url}/v1/chat/completions",
                data=json.dumps(probe.body).encode(),
                headers={
                    **headers,
                    "Content-Type": "application/json",
                    # unique: vLLM tracks requests by id, and replicas may probe at once
                    "X-Request-ID": f"vllama-probe-{probe.name}-{uuid.uuid4().hex[:12]}",
                },
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            results[probe.name] = None
            continue
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        results[probe.name] = verdict(probe.name, status, answer)
    return Detected(results)


def vision_in_config(config: Mapping[str, Any] | None) -> bool:
    """A model's config.json says it reads images: every vision-language architecture vLLM
    serves (LLaVA, Qwen2-VL, Idefics3/SmolVLM, Gemma 3, Mllama, PaliGemma, ...) has a
    `vision_config`."""
    return isinstance(config, Mapping) and isinstance(config.get("vision_config"), Mapping)
