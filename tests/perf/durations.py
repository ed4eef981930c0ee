"""Are Ollama's durations honest when `stream: false` is answered whole? A real vLLM engine
(CPU build, the demo model) run with --enable-per-request-metrics, the façade in front;
rounds of /api/chat requests streamed (durations measured by the façade from the first
and last event) and not streamed (answered whole: eval_duration is the engine's own
generation time), interleaved (tests/perf/harness.py). Prints, per mode, the medians of
prompt_eval_duration, eval_duration per generated token, total_duration, and the
façade's CPU per request.

    python -m tests.perf.durations [--rounds 6] [--requests 12] [--concurrency 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.engines import start_engine
from tests.perf import procs
from tests.perf.harness import LoadMonitor, describe_load, interleave, machine, median, us_per

MODEL = "vllama-demo"
TOKENS = 64


async def _requests(url: str, stream: bool, n: int, concurrency: int) -> list[dict[str, Any]]:
    """n /api/chat answers (their final objects), `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, i: int) -> dict[str, Any]:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"{i} hello hello hello"}],
            "stream": stream,
            "options": {"num_predict": TOKENS, "temperature": 0},
        }
        async with gate, session.post(f"{url}/api/chat", json=body) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {text[:200]}")
        final: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
        return final

    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return await asyncio.gather(*(one(session, i) for i in range(n)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=12, help="per mode and round")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here as well")
    args = parser.parse_args()
    engine = start_engine("chat", extra_args=["--enable-per-request-metrics"])
    try:
        with procs.running(procs.facade(engine.url, "facade-durations"), "/health/ready") as fac:
            asyncio.run(_requests(fac.url, True, 4, 2))  # warm; the façade learns the engine

            def run(mode: str, _r: int) -> dict[str, Any]:
                before = fac.cpu_seconds()
                finals = asyncio.run(
                    _requests(fac.url, mode == "streamed", args.requests, args.concurrency)
                )
                return {"finals": finals, "cpu_s": fac.cpu_seconds() - before}

            with LoadMonitor() as load:
                runs = interleave(["streamed", "whole"], args.rounds, run)
    finally:
        engine.stop()
    figures: dict[str, Any] = {}
    for mode, rs in runs.items():
        finals = [f for r in rs for f in r["finals"]]
        figures[mode] = {
            "requests": len(finals),
            "prompt_eval_ms": median(f["prompt_eval_duration"] / 1e6 for f in finals),
            "eval_ms_per_token": median(
                f["eval_duration"] / 1e6 / max(f["eval_count"] - 1, 1) for f in finals
            ),
            "total_ms": median(f["total_duration"] / 1e6 for f in finals),
            "eval_count": median(f["eval_count"] for f in finals),
            "facade_cpu_us_per_request": median(us_per(r["cpu_s"], len(r["finals"])) for r in rs),
        }
        print(f"{mode:<9} {figures[mode]}")
    print(describe_load(load.summary()))
    if args.json:
        doc = {
            "machine": machine(),
            "concurrency": args.concurrency,
            "load": load.summary(),
            "modes": figures,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
