"""Load- and prefix-aware routing against plain round robin, on two real engines (the CPU
build, the demo model, one core each: VLLM_CPU_OMP_THREADS_BIND), with a skewed workload:

- foreground, through the façade: conversations of several turns, each with its own long
  system prompt (past two of vLLM's 128-token cache blocks), a few at a time; every turn
  repeats the conversation so far (as chat clients do) and asks for a short answer;
- background, straight to engine A (another façade, worker or tenant the façade cannot
  see): a few heavy requests (long generations) all the time.

Modes, interleaved round by round, each round with fresh system prompts (a cold prefix
cache): `round-robin`, `load` (engine load and prefix affinity, the default), and
`load-no-affinity`. Per mode: foreground TTFT (client side, streamed), turns per second,
the prefix-cache hit rate from the engines' own counters (vllm:prefix_cache_hits /
queries over both engines), vLLM's own mean TTFT, and where the turns went; then ratios
against round robin. Bounded: `--rounds` x modes x conversations x turns requests.

    python -m tests.perf.routing [--rounds 3] [--conversations 12] [--turns 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp

from tests.engines import start_engine
from tests.perf import procs
from tests.perf.harness import machine

MODEL = "vllama-demo"
MODES = {
    "round-robin": {"VLLAMA_BALANCER": "round-robin"},
    "load": {"VLLAMA_BALANCER": "load"},
    "load-no-affinity": {"VLLAMA_BALANCER": "load", "VLLAMA_PREFIX_AFFINITY": "false"},
    # A tighter affinity (leaves a replica one request busier): for small engines.
    "load-slack-1": {"VLLAMA_BALANCER": "load", "VLLAMA_AFFINITY_SLACK": "1"},
}
DEFAULT_MODES = "round-robin,load,load-slack-1,load-no-affinity"
WORDS = [
    "river",
    "stone",
    "maple",
    "copper",
    "lantern",
    "harbor",
    "meadow",
    "violet",
    "falcon",
    "ember",
    "quartz",
    "willow",
    "glacier",
    "orchid",
    "thunder",
    "saffron",
    "canyon",
    "marble",
    "cedar",
    "comet",
    "velvet",
    "prairie",
    "cobalt",
    "summit",
    "juniper",
    "beacon",
    "tundra",
    "amber",
    "lagoon",
]
SYSTEM_CHARS = 280  # about 300 tokens of the demo model's byte-level tokenizer
_COUNTERS = re.compile(
    r"^(vllm:prefix_cache_hits_total|vllm:prefix_cache_queries_total|"
    r"vllm:time_to_first_token_seconds_sum|vllm:time_to_first_token_seconds_count)"
    r"(?:\{[^}]*\})? ([0-9.eE+-]+)",
    re.MULTILINE,
)


def system_prompt(rng: random.Random) -> str:
    words: list[str] = []
    while len(" ".join(words)) < SYSTEM_CHARS:
        words.append(rng.choice(WORDS))
    return "You are a guide. Facts: " + " ".join(words)


async def counters(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for name, value in _COUNTERS.findall(text):
        out[name] = out.get(name, 0.0) + float(value)
    return out


async def turn(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]]
) -> tuple[float, str]:
    """One streamed chat turn: (TTFT seconds, the answer's text)."""
    body = {"model": MODEL, "messages": messages, "max_tokens": 16, "stream": True}
    start = time.perf_counter()
    ttft = None
    parts: list[str] = []
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    if ttft is None:
                        ttft = time.perf_counter() - start
                    parts.append(text)
    return (ttft if ttft is not None else time.perf_counter() - start), "".join(parts)


async def conversation(
    session: aiohttp.ClientSession, url: str, rng: random.Random, turns: int, ttfts: list[float]
) -> None:
    messages = [{"role": "system", "content": system_prompt(rng)}]
    for t in range(turns):
        messages.append(
            {"role": "user", "content": f"question {t}: what about the {rng.choice(WORDS)}?"}
        )
        ttft, answer = await turn(session, url, messages)
        ttfts.append(ttft)
        messages.append({"role": "assistant", "content": answer[:40]})


async def background(
    session: aiohttp.ClientSession, url: str, stop: asyncio.Event, tokens: int
) -> None:
    """Heavy requests straight to one engine, one after the other, until `stop`."""
    body = {"model": MODEL, "prompt": "go", "max_tokens": tokens, "ignore_eos": True}
    while not stop.is_set():
        async with session.post(f"{url}/v1/completions", json=body) as resp:
            await resp.read()


async def one_round(
    facade_url: str,
    engines: list[str],
    seed: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=300)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
        before = [await counters(session, e) for e in engines]
        stop = asyncio.Event()
        heavy = [
            asyncio.create_task(background(session, engines[0], stop, args.heavy_tokens))
            for _ in range(args.heavy)
        ]
        await asyncio.sleep(1.0)  # the background is running before the foreground starts
        ttfts: list[float] = []
        gate = asyncio.Semaphore(args.concurrency)

        async def gated(r: random.Random) -> None:
            async with gate:
                await conversation(session, facade_url, r, args.turns, ttfts)

        started = time.perf_counter()
        await asyncio.gather(
            *(gated(random.Random(rng.random())) for _ in range(args.conversations))
        )
        elapsed = time.perf_counter() - started
        after = [await counters(session, e) for e in engines]
        stop.set()
        await asyncio.gather(*heavy)

    def delta(name: str, i: int) -> float:
        return after[i].get(name, 0.0) - before[i].get(name, 0.0)

    hits = sum(delta("vllm:prefix_cache_hits_total", i) for i in range(2))
    queries = sum(delta("vllm:prefix_cache_queries_total", i) for i in range(2))
    ttft_sum = sum(delta("vllm:time_to_first_token_seconds_sum", i) for i in range(2))
    ttft_n = sum(delta("vllm:time_to_first_token_seconds_count", i) for i in range(2))
    return {
        "load_average_1m": round(os.getloadavg()[0], 1),
        "turns": len(ttfts),
        "turns_per_s": len(ttfts) / elapsed,
        "ttft_p50_ms": statistics.median(ttfts) * 1e3,
        "ttft_p90_ms": statistics.quantiles(ttfts, n=10)[-1] * 1e3,
        "prefix_hit_rate": hits / queries if queries else 0.0,
        "vllm_ttft_mean_ms": ttft_sum / ttft_n * 1e3 if ttft_n else None,
        "queries_on_b_share": (delta("vllm:prefix_cache_queries_total", 1) / queries)
        if queries
        else None,
    }


def med(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows if r[key] is not None))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--heavy", type=int, default=4, help="background requests on engine A")
    parser.add_argument("--heavy-tokens", type=int, default=400)
    parser.add_argument("--modes", default=DEFAULT_MODES)
    parser.add_argument("--json", type=Path, help="write the figures here as well")
    args = parser.parse_args()
    modes = args.modes.split(",")
    results: dict[str, Any] = {"machine": machine(), "settings": vars(args) | {"json": None}}
    with ExitStack() as stack:
        # One core each, as two GPUs would be two devices; both load at once.
        a = start_engine("chat", wait=False, extra_env={"VLLM_CPU_OMP_THREADS_BIND": "0"})
        stack.callback(a.stop)
        b = start_engine("chat", wait=False, extra_env={"VLLM_CPU_OMP_THREADS_BIND": "1"})
        stack.callback(b.stop)
        a.wait_healthy()
        b.wait_healthy()
        engines = [a.url, b.url]
        facades = {
            mode: stack.enter_context(
                procs.running(
                    procs.facade(
                        engines,
                        f"facade-{mode}",
                        extra_env={
                            **MODES[mode],
                            "VLLAMA_HEALTH_INTERVAL_S": "1",
                            "VLLAMA_LOG_LEVEL": "WARNING",
                        },
                    ),
                    "/health/ready",
                )
            )
            for mode in modes
        }
        # Warm up: the first requests of each shape compile (torch.compile on the CPU
        # build); a round of every mode, not recorded, so no mode pays for it.
        for i, mode in enumerate(modes):
            asyncio.run(one_round(facades[mode].url, engines, 10**6 + i, args))
        rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for r in range(args.rounds):
            for mode in random.sample(modes, len(modes)):
                seed = 1000 * r + modes.index(mode)  # fresh system prompts every round and mode
                row = asyncio.run(one_round(facades[mode].url, engines, seed, args))
                rows[mode].append(row)
                print(
                    f"round {r} {mode:<17} {row['turns_per_s']:.2f} turns/s  TTFT p50 "
                    f"{row['ttft_p50_ms']:.0f} ms p90 {row['ttft_p90_ms']:.0f} ms  prefix hits "
                    f"{row['prefix_hit_rate']:.1%}  on B {row['queries_on_b_share']:.0%}",
                    flush=True,
                )
        base = rows.get("round-robin")
        summary: dict[str, Any] = {}
        for mode, mode_rows in rows.items():
            s: dict[str, Any] = {
                k: round(med(mode_rows, k), 4)
                for k in (
                    "turns_per_s",
                    "ttft_p50_ms",
                    "ttft_p90_ms",
                    "prefix_hit_rate",
                    "vllm_ttft_mean_ms",
                    "queries_on_b_share",
                )
            }
            if base is not None and mode != "round-robin":
                pairs = list(zip(mode_rows, base, strict=True))
                s["vs_round_robin"] = {
                    "turns_per_s": round(
                        statistics.median(x["turns_per_s"] / y["turns_per_s"] for x, y in pairs), 3
                    ),
                    "ttft_p50": round(
                        statistics.median(x["ttft_p50_ms"] / y["ttft_p50_ms"] for x, y in pairs), 3
                    ),
                    "ttft_p90": round(
                        statistics.median(x["ttft_p90_ms"] / y["ttft_p90_ms"] for x, y in pairs), 3
                    ),
                }
            summary[mode] = s
        results["rounds"] = rows
        results["summary"] = summary
        print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
