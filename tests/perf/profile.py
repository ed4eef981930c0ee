"""`make profile`: where the façade's CPU goes, per kind of request.

Starts the instant upstream and `vllama serve` (as `make bench` does), puts one closed-loop
load on the façade per scenario, samples the façade process with py-spy (from
.venv-bench, `scripts/setup-bench-venv.sh`) and sorts every sample into one part of the
request path by its innermost frame that belongs to a known library. Writes
docs/performance-profile.md (generated; tables only) and docs/performance-profile.json.

    python -m tests.perf.profile [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.perf import procs
from tests.perf.harness import LoadMonitor, describe_load, level, machine, measure, us_per
from tests.procs import REPO

PY_SPY = REPO / ".venv-bench" / "bin" / "py-spy"
RESULTS = REPO / "docs" / "performance-profile.json"
REPORT = REPO / "docs" / "performance-profile.md"
SAMPLE_HZ = 250


@dataclass(frozen=True)
class Scenario:
    name: str
    api: str  # "openai" (/v1 pass-through) or "ollama" (/api/chat)
    stream: bool
    concurrency: int
    chunks: int  # events the instant upstream streams per answer
    interval_ms: float  # and the gap between them (0: all at once)


SCENARIOS = (
    Scenario("/v1 plain, c=1", "openai", False, 1, 64, 0.0),
    Scenario("/api plain, c=1", "ollama", False, 1, 64, 0.0),
    Scenario("/v1 stream 64 tokens at once, c=32", "openai", True, 32, 64, 0.0),
    Scenario("/api stream 64 tokens at once, c=32", "ollama", True, 32, 64, 0.0),
    Scenario("/v1 stream 64 tokens 2 ms apart, c=16", "openai", True, 16, 64, 2.0),
    Scenario("/api stream 64 tokens 2 ms apart, c=16", "ollama", True, 16, 64, 2.0),
)

# The innermost frame whose file matches decides the part (first match wins per frame).
PARTS = (
    ("JSON encode/decode", ("json/decoder.py", "json/encoder.py", "json/__init__.py")),
    ("SSE decoding", ("vllama/upstream/sse.py",)),
    ("Ollama translation", ("vllama/translate/",)),
    ("access log", ("logging/", "pythonjsonlogger/", "vllama/observability/logging.py")),
    ("Prometheus metrics", ("prometheus_client/", "vllama/observability/metrics.py")),
    ("upstream client (aiohttp)", ("aiohttp/", "yarl/", "multidict/")),
    ("HTTP server (uvicorn)", ("uvicorn/",)),
    ("Starlette/FastAPI", ("starlette/", "fastapi/", "anyio/")),
    ("façade: routes and middleware", ("vllama/",)),
    ("asyncio", ("asyncio/", "contextlib.py")),
)
EVENT_LOOP = "event loop and socket I/O (uvloop, C)"
OTHER = "other"


def part_of(stack: list[str]) -> str:
    """The part one sampled stack (outermost first) is charged to."""
    if stack and "Runner.run" in stack[-1]:  # asyncio.run's frame is the innermost Python
        return EVENT_LOOP  # frame: the sample is in uvloop's C code (the loop, socket I/O)
    for frame in reversed(stack):
        where = frame.rpartition("(")[2]
        for part, needles in PARTS:
            if any(n in where for n in needles):
                return part
    return OTHER


def parts_from_raw(raw: str) -> Counter[str]:
    """py-spy's `--format raw` (collapsed stacks, `a;b;c N`) → samples per part."""
    parts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            parts[part_of(stack.split(";"))] += int(count)
    return parts


def profile(scenario: Scenario, seconds: float, workdir: Path) -> dict[str, Any]:
    with ExitStack() as stack:
        upstream = procs.instant_upstream(chunks=scenario.chunks, interval_ms=scenario.interval_ms)
        up = stack.enter_context(procs.running(upstream, "/health"))
        fac = stack.enter_context(procs.running(procs.facade(up.url), "/health/ready"))
        level(fac.url, scenario.api, scenario.stream, 4, 1.0, 300, max_tokens=scenario.chunks)
        out = workdir / "samples.txt"
        command = [str(PY_SPY), "record", "--pid", str(fac.popen.pid), "--nonblocking"]
        command += ["--rate", str(SAMPLE_HZ), "--duration", str(int(seconds) + 1)]
        command += ["--format", "raw", "--output", str(out)]
        spy = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # py-spy attaches before the load starts
        load = measure(
            lambda: level(
                fac.url,
                scenario.api,
                scenario.stream,
                scenario.concurrency,
                seconds,
                1_000_000,
                max_tokens=scenario.chunks,
            ),
            {"facade": fac.cpu_seconds},
        )
        if spy.wait(seconds + 30) != 0 or not out.exists():
            raise RuntimeError(f"py-spy failed on {scenario.name}")
        parts = parts_from_raw(out.read_text())
    total = sum(parts.values()) or 1
    return {
        "scenario": scenario.name,
        "requests": load["ok"],
        "errors": load["errors"],
        "requests_per_s": load["requests_per_s"],
        # Sampling slows the façade a little; this figure is for shares, make bench for speed.
        "cpu_us_per_request_while_sampled": us_per(load["cpu_s"]["facade"], load["ok"]),
        "cpu_us_per_token_while_sampled": us_per(load["cpu_s"]["facade"], load["output_tokens"]),
        "samples": total,
        "shares": {p: round(n / total, 3) for p, n in parts.most_common()},
    }


def write_report(results: dict[str, Any], path: Path) -> None:
    rows = results["scenarios"]
    names = [EVENT_LOOP, *(p for p, _ in PARTS), OTHER]
    used = [n for n in names if any(r["shares"].get(n, 0) >= 0.005 for r in rows)]
    m = results["machine"]
    lines = [
        "# Where the façade's CPU goes",
        "",
        "Generated by `make profile` (`tests/perf/profile.py`) from",
        "`docs/performance-profile.json`; do not edit by hand. Re-run to refresh.",
        "",
        f"Machine: {m['cpus']} CPUs, Python {m['python']}; run {m['date']}; "
        f"{describe_load(results['load'])}. The façade runs as",
        "in `make bench` (`vllama serve --engine URL`, 1 worker, JSON access log, metrics) in",
        f"front of the instant upstream; py-spy samples it at {SAMPLE_HZ} Hz while one",
        "closed-loop load runs. Each sample is charged to the innermost frame that belongs to",
        "a known part of the request path; the loop's own C code (uvloop, socket reads and",
        "writes) shows as the event loop. Shares are of the samples; CPU per request is",
        "measured while sampled (a little slower than `make bench`'s figures).",
        "",
        "| part | " + " | ".join(r["scenario"] for r in rows) + " |",
        "|---|" + "---|" * len(rows),
        "| CPU µs per request | "
        + " | ".join(str(r["cpu_us_per_request_while_sampled"]) for r in rows)
        + " |",
        "| CPU µs per streamed token | "
        + " | ".join(
            str(r["cpu_us_per_token_while_sampled"]) if "stream" in r["scenario"] else "–"
            for r in rows
        )
        + " |",
    ]
    for name in used:
        cells = [f"{100 * r['shares'].get(name, 0):.1f} %" for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "How to read it, and what follows from it: docs/performance-analysis.md.", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="load per scenario")
    args = parser.parse_args()
    if not PY_SPY.exists():
        raise SystemExit(f"{PY_SPY.relative_to(REPO)} is missing: run scripts/setup-bench-venv.sh")
    rows = []
    procs.BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=procs.BENCH_DIR) as tmp, LoadMonitor() as load:
        for scenario in SCENARIOS:
            print(f"profiling {scenario.name} …", flush=True)
            rows.append(profile(scenario, args.seconds, Path(tmp)))
    results = {
        "machine": machine(),
        "sample_hz": SAMPLE_HZ,
        "load": load.summary(),
        "scenarios": rows,
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, REPORT)
    print(f"wrote {RESULTS.relative_to(REPO)} and {REPORT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
