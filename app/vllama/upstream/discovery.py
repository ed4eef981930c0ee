"""What an engine serves: its `GET /v1/models` cards, and whether each model generates
or embeds (vLLM does not say; a cheap probe and the model's config.json tell)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from vllama.config import EngineConfig

# Architectures whose names end like this are decoders that generate text.
_GENERATIVE_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")
_POOLING_HINTS = ("ForSequenceClassification", "ForTokenClassification", "Embedding")


@dataclass(frozen=True)
class ModelCard:
    id: str
    max_model_len: int | None
    root: str | None
    created: int
    kind: str | None  # "completion", "embedding", or None when unknown


def _headers(engine: EngineConfig) -> dict[str, str]:
    return {"Authorization": f"Bearer {engine.api_key}"} if engine.api_key else {}


def kind_from_architectures(config: dict[str, Any] | None) -> str | None:
    archs = config.get("architectures") if config else None
    if not isinstance(archs, list) or not archs:
        return None
    names = [a for a in archs if isinstance(a, str)]
    if any(a.endswith(_GENERATIVE_SUFFIXES) for a in names):
        return "completion"
    if any(a.endswith("Model") or any(h in a for h in _POOLING_HINTS) for a in names):
        return "embedding"
    return None


async def probe_kind(
    session: aiohttp.ClientSession, engine: EngineConfig, timeout: float
) -> str | None:
    """A pooling engine has no chat route (404); a generating one rejects the empty body
    (400/422) without running anything."""
    try:
        async with session.post(
            f"{engine.url}/v1/chat/completions",
            data=b"{}",
            headers={"Content-Type": "application/json", **_headers(engine)},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            await resp.read()
            if resp.status == 404:
                return "embedding"
            if resp.status in (400, 422):
                return "completion"
    except (aiohttp.ClientError, asyncio.TimeoutError):
        pass
    return None


async def fetch_models(
    session: aiohttp.ClientSession, engine: EngineConfig, timeout: float
) -> list[ModelCard]:
    """The engine's model cards; raises aiohttp.ClientError / TimeoutError / ValueError."""
    async with session.get(
        f"{engine.url}/v1/models",
        headers=_headers(engine),
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise ValueError(f"GET {engine.url}/v1/models answered HTTP {resp.status}")
    body = json.loads(raw)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ValueError(f"GET {engine.url}/v1/models: no `data` list")
    cards: list[ModelCard] = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        mml = item.get("max_model_len")
        root = item.get("root")
        created = item.get("created")
        cards.append(
            ModelCard(
                id=item["id"],
                max_model_len=mml if isinstance(mml, int) else None,
                root=root if isinstance(root, str) else None,
                created=created if isinstance(created, int) else 0,
                kind=None,
            )
        )
    return cards
