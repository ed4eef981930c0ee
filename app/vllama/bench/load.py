"""The load generator behind `vllama bench`: closed-loop (N workers) or open-loop (a fixed
arrival rate) against any Ollama or OpenAI endpoint, streaming or not.

It times what a client sees: time to the first chunk that carries output, the gaps between
output chunks, the whole request. It also measures its own CPU use, so a report can show
when the client itself, not the target, is the limit.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from vllama.bench.stats import RequestResult, summarize

Api = Literal["ollama", "openai"]

# A word the demo tokenizer (and most BPE vocabularies) encodes as about one token.
_FILLER = "hello"


@dataclass(frozen=True)
class LoadSpec:
    url: str  # the target's base URL, e.g. http://127.0.0.1:11434
    model: str
    api: Api = "ollama"
    stream: bool = True
    prompt_tokens: int = 32  # approximate: filler words, one per token on BPE vocabularies
    max_tokens: int = 64
    concurrency: int = 1  # workers (closed loop) or the in-flight cap (open loop)
    requests: int | None = 100  # stop after this many (None: only the duration bounds it)
    duration_s: float | None = None  # stop issuing after this long
    rate: float | None = None  # open loop: arrivals per second
    timeout_s: float = 300.0
    api_key: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.requests is None and self.duration_s is None:
            raise ValueError("give --requests or --duration: an unbounded load is never run")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")


def build_request(spec: LoadSpec, index: int) -> tuple[str, bytes]:
    """Path and body of request `index`. A unique prefix keeps prefix caches honest."""
    prompt = f"{index} " + " ".join([_FILLER] * max(spec.prompt_tokens - 1, 0))
    messages = [{"role": "user", "content": prompt}]
    body: dict[str, Any]
    if spec.api == "ollama":
        path = "/api/chat"
        body = {
            "model": spec.model,
            "messages": messages,
            "stream": spec.stream,
            "options": {"num_predict": spec.max_tokens},
        }
    else:
        path = "/v1/chat/completions"
        body = {
            "model": spec.model,
            "messages": messages,
            "max_tokens": spec.max_tokens,
            "stream": spec.stream,
        }
        if spec.stream:
            body["stream_options"] = {"include_usage": True}
    body.update(spec.extra_body)
    return path, json.dumps(body).encode()


def _openai_event(line: bytes, result: RequestResult, now: float, last: list[float]) -> bool:
    """Account one SSE line; return True at [DONE]."""
    if not line.startswith(b"data:"):
        return False
    data = line[5:].strip()
    if data == b"[DONE]":
        return True
    event = json.loads(data)
    if "error" in event and "choices" not in event:
        result.error = "stream_error"
        return True
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning") or delta.get("tool_calls"):
            _output_chunk(result, now, last)
            break
    usage = event.get("usage")
    if usage:
        result.output_tokens = int(usage.get("completion_tokens") or 0)
    return False


def _ollama_line(line: bytes, result: RequestResult, now: float, last: list[float]) -> bool:
    """Account one NDJSON line; return True on the final object."""
    if not line.strip():
        return False
    obj = json.loads(line)
    if "error" in obj:
        result.error = "stream_error"
        return True
    message = obj.get("message") or {}
    if message.get("content") or message.get("thinking") or obj.get("response"):
        _output_chunk(result, now, last)
    if obj.get("done"):
        result.output_tokens = int(obj.get("eval_count") or result.output_tokens)
        return True
    return False


def _output_chunk(result: RequestResult, now: float, last: list[float]) -> None:
    if result.first_token is None:
        result.first_token = now
    else:
        result.gaps.append(now - last[0])
    last[0] = now
    result.output_tokens += 1


async def run_one(session: aiohttp.ClientSession, spec: LoadSpec, index: int) -> RequestResult:
    path, body = build_request(spec, index)
    headers = {"Content-Type": "application/json"}
    if spec.api_key:
        headers["Authorization"] = f"Bearer {spec.api_key}"
    result = RequestResult(start=time.perf_counter())
    try:
        async with session.post(spec.url + path, data=body, headers=headers) as resp:
            if resp.status != 200:
                await resp.read()
                result.error = f"http_{resp.status}"
            elif spec.stream:
                await _read_stream(resp, spec.api, result)
            else:
                payload = await resp.json(content_type=None)
                result.first_token = time.perf_counter()
                if spec.api == "ollama":
                    result.output_tokens = int(payload.get("eval_count") or 0)
                else:
                    result.output_tokens = int(
                        (payload.get("usage") or {}).get("completion_tokens") or 0
                    )
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        result.error = type(exc).__name__
    result.end = time.perf_counter()
    return result


async def _read_stream(resp: aiohttp.ClientResponse, api: Api, result: RequestResult) -> None:
    handle = _ollama_line if api == "ollama" else _openai_event
    buffer = b""
    last = [0.0]
    chunks_seen = 0
    async for chunk in resp.content.iter_any():
        now = time.perf_counter()
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            chunks_seen += 1
            if handle(line.rstrip(b"\r"), result, now, last):
                return
    if buffer.strip():
        handle(buffer, result, time.perf_counter(), last)
        return
    result.error = "truncated_stream" if chunks_seen else "empty_stream"


async def run_level(spec: LoadSpec) -> dict[str, Any]:
    """Run one load level and summarise it (plus the client's own CPU use)."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    results: list[RequestResult] = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = None if spec.duration_s is None else started + spec.duration_s
    issued = 0

    def take() -> int | None:
        nonlocal issued
        if spec.requests is not None and issued >= spec.requests:
            return None
        if deadline is not None and time.perf_counter() >= deadline:
            return None
        issued += 1
        return issued - 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if spec.rate is None:

            async def worker() -> None:
                while (index := take()) is not None:
                    results.append(await run_one(session, spec, index))

            await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
        else:
            await _open_loop(session, spec, take, results)
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    summary = summarize(results, wall)
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    summary.update(
        api=spec.api,
        stream=spec.stream,
        concurrency=spec.concurrency,
        rate=spec.rate,
        client_cpu_s=round(client_cpu, 3),
        # Near 1.0 the client used a whole core: its own ceiling, not the target's.
        client_cpu_share=round(client_cpu / wall, 3) if wall > 0 else 0.0,
    )
    return summary


async def _open_loop(
    session: aiohttp.ClientSession,
    spec: LoadSpec,
    take: Any,
    results: list[RequestResult],
) -> None:
    """Constant arrival rate; arrivals past the in-flight cap wait (and that wait counts)."""
    assert spec.rate is not None
    cap = asyncio.Semaphore(spec.concurrency)
    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()

    async def one(index: int, due: float) -> None:
        async with cap:
            result = await run_one(session, spec, index)
        result.start = min(result.start, due)  # queueing behind the cap is latency too
        results.append(result)

    n = 0
    while (index := take()) is not None:
        due = started + n / spec.rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, due)))
        n += 1
    await asyncio.gather(*tasks)


async def sweep(spec: LoadSpec, concurrencies: list[int]) -> list[dict[str, Any]]:
    """One level per concurrency, in order."""
    out = []
    for c in concurrencies:
        level = LoadSpec(**{**spec.__dict__, "concurrency": c})
        out.append(await run_level(level))
    return out
