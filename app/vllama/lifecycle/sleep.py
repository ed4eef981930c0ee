"""vLLM's sleep mode over HTTP (vLLM 0.32, `vllm/entrypoints/serve/dev/sleep/api_router.py`).

An engine started with `--enable-sleep-mode` and `VLLM_SERVER_DEV_MODE=1` serves
`POST /sleep?level=N` (1: weights to host memory, KV cache dropped; 2: both dropped),
`POST /wake_up` and `GET /is_sleeping`. vLLM accepts `--enable-sleep-mode` only on CUDA,
ROCm and XPU (`Platform.is_sleep_mode_available`); the CPU build refuses to start with it.
So it is asked for on GPU builds only, and an engine counts as able to sleep once it
answered `/is_sleeping`.
"""

from __future__ import annotations

import asyncio

import aiohttp

# Sleeping copies the weights to host memory; waking copies them back: seconds for big
# models (vLLM's blog reports 0.1-0.4 s wake-ups for small ones, more for 70B).
_TIMEOUT = aiohttp.ClientTimeout(total=600)


class SleepError(Exception):
    pass


async def _post(session: aiohttp.ClientSession, url: str) -> None:
    try:
        async with session.post(url, timeout=_TIMEOUT) as resp:
            await resp.read()
            if resp.status != 200:
                raise SleepError(f"{url} answered HTTP {resp.status}")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise SleepError(f"{url} failed: {exc!r}") from exc


async def sleep(session: aiohttp.ClientSession, engine_url: str, level: int) -> None:
    await _post(session, f"{engine_url}/sleep?level={level}")


async def wake(session: aiohttp.ClientSession, engine_url: str) -> None:
    await _post(session, f"{engine_url}/wake_up")


async def can_sleep(session: aiohttp.ClientSession, engine_url: str) -> bool:
    """True when the engine serves vLLM's sleep endpoints (and is awake)."""
    try:
        async with session.get(
            f"{engine_url}/is_sleeping", timeout=aiohttp.ClientTimeout(total=10)
        ) as resp:
            if resp.status != 200:
                return False
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return False
    return isinstance(body, dict) and body.get("is_sleeping") is False
