"""Settings: one typed object, merged from CLI flags > env (VLLAMA_*) > ./vllama.toml >
~/.config/vllama/config.toml > defaults.

Every other room imports `Settings` (and the small models in here) and nothing else from
the outside world: this is the only place that reads the environment or config files.
`load_settings` also records where each top-level value came from, for
`vllama config --show`.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vllama.names import resolve_name
from vllama.units import parse_duration, parse_size

ENV_PREFIX = "VLLAMA_"
DEFAULT_PORT = 11434  # Ollama's port: every Ollama client's default
DEFAULT_MAX_IMAGE_PIXELS = 7680 * 4320


class ConfigError(Exception):
    """The configuration cannot be used; the message says which value and what to do."""


class EngineConfig(BaseModel):
    """A running vLLM OpenAI-compatible server the façade forwards to."""

    model_config = ConfigDict(extra="forbid")

    url: str
    # Models served there; empty means "discover them from GET /v1/models".
    models: list[str] = Field(default_factory=list)
    # Sent upstream as `Authorization: Bearer` when the engine was started with --api-key.
    api_key: str | None = None
    # What the engine loads (a repo id or a path), when known: `vllama serve` sets it for
    # the engines it supervises. /api/delete never removes it, reachable or not.
    source: str | None = None
    # None: detected (tools, thinking and vision by probing the engine at discovery;
    # completion/embedding always). A list overrides the detection of tools/thinking/vision.
    capabilities: list[Literal["completion", "embedding", "tools", "thinking", "vision"]] | None = (
        None
    )

    @field_validator("url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"engine url {v!r} must start with http:// or https://")
        return v.rstrip("/")


class ModelLaunch(BaseModel):
    """A model that `vllama serve --model` starts an engine for."""

    model_config = ConfigDict(extra="forbid")

    model: str  # Hugging Face repo id, local path or alias
    served_name: str | None = None
    engine_args: list[str] = Field(default_factory=list)
    port: int | None = None  # None: a free port is picked


# Engine names become systemd instance and compose service names.
_PLAN_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class PlannedEngine(BaseModel):
    """One line of a host's declaration (`[[plan.engines]]`): a model, how many GPUs one
    engine of it spans (tensor x pipeline parallel), and how many such engines run.
    engine/plan.py turns the lines into concrete engines."""

    model_config = ConfigDict(extra="forbid")

    model: str  # Hugging Face repo id, path on the host, or alias
    served_name: str | None = None  # what clients ask for; default: the model
    name: str | None = None  # engine (unit/service) name; default: from served_name/model
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    # A number, or "fill": one engine per tensor x pipeline GPUs left over by the others.
    replicas: int | Literal["fill"] = 1
    gpus: list[int] | None = None  # these device ids (all replicas, in order); None: assigned
    port: int | None = Field(None, ge=1, le=65535)  # the first replica's; the next ones follow
    args: list[str] = Field(default_factory=list)  # more vLLM flags (a list, or shell text)
    env: dict[str, str] = Field(default_factory=dict)
    shm_size: str | None = None  # /dev/shm for compose; None: derived from the GPU count
    # Empty: detected from the engine (its probes), as for any fronted engine; else exactly these.
    capabilities: list[Literal["tools", "thinking", "vision"]] = Field(default_factory=list)

    @field_validator("replicas")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError('replicas must be 1 or more, or "fill"')
        return v

    @field_validator("args", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):  # an inventory's `args: --max-model-len 8192`
            return shlex.split(v)
        return v

    @field_validator("name")
    @classmethod
    def _name_chars(cls, v: str | None) -> str | None:
        if v is not None and (not v or not set(v) <= _PLAN_NAME_CHARS or v[0] == "-"):
            raise ValueError(
                f"engine name {v!r}: use lower-case letters, digits and '-' (it names a "
                "systemd unit and a compose service)"
            )
        return v


class HostPlan(BaseModel):
    """Every GPU of one host, declared once (`[plan]`): `vllama plan` derives each engine's
    ports, devices, command line, the façade's engine list and Prometheus targets."""

    model_config = ConfigDict(extra="forbid")

    gpus: int | list[int] = Field(0)  # a count (ids 0..n-1) or the ids; 0: no GPU (CPU)
    base_port: int = Field(8001, ge=1, le=65535)  # engines without a port take 8001, 8002, ...
    engine_host: str = "127.0.0.1"  # where engines listen (0.0.0.0 lets Prometheus scrape)
    address: str | None = None  # how other hosts reach this one (Prometheus targets)
    engines: list[PlannedEngine] = Field(default_factory=list)

    @field_validator("gpus")
    @classmethod
    def _gpu_ids(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 0:
            raise ValueError("gpus must be a count (0 or more) or a list of device ids")
        if isinstance(v, list):
            if any(i < 0 for i in v):
                raise ValueError("GPU device ids are 0 or more")
            if len(set(v)) != len(v):
                raise ValueError(f"gpus {v} lists a device twice")
        return v


# Keys travel in HTTP headers (`Authorization: Bearer <key>`, `x-api-key`): visible ASCII
# only, so what a client sends byte for byte is what was configured.
_KEY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))


def check_key_text(key: str) -> str | None:
    """Why `key` cannot be used as an API key (never echoing it), or None."""
    if not key:
        return "an API key is empty"
    if not set(key) <= _KEY_CHARS:
        return (
            "an API key holds characters other than visible ASCII (letters, digits, "
            "punctuation; no spaces): HTTP headers cannot carry them reliably, so no client "
            "could log in with it; generate one with `openssl rand -hex 32`"
        )
    return None


class ApiKey(BaseModel):
    """A client key. `name` is what logs and metrics show instead of the key."""

    model_config = ConfigDict(extra="forbid")

    key: str
    name: str
    max_concurrency: int | None = Field(None, ge=1)
    priority: int | None = None  # passed to vLLM's priority scheduling (lower runs first)

    @field_validator("key")
    @classmethod
    def _visible_ascii(cls, v: str) -> str:
        problem = check_key_text(v)
        if problem is not None:
            raise ValueError(problem)
        return v


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Where the façade listens.
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    # Façade worker processes (server/workers.py); more than 1 needs engines that run on
    # their own (--engine, [[engines]], [plan]), not supervised ones.
    workers: int = Field(1, ge=1)
    # prometheus-client's multiprocess folder when workers > 1; None: a fresh temporary one.
    metrics_dir: Path | None = None

    # Engines already running (`--engine URL`), and models to start engines for (`--model`).
    engines: list[EngineConfig] = Field(default_factory=list)
    models: list[ModelLaunch] = Field(default_factory=list)
    # This host's GPUs and the engines on them, declared once (engine/plan.py); the façade
    # fronts the planned engines besides `engines`.
    plan: HostPlan | None = None
    # Friendly names: "qwen2.5:0.5b" -> "Qwen/Qwen2.5-0.5B-Instruct". Same on /api and /v1.
    aliases: dict[str, str] = Field(default_factory=dict)

    # Limits.
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # Pixels of one image in a request (read from its header); 8K UHD by default. Larger
    # ones are a 400: vLLM answered 500 to a 14000x14000 PNG and spends seconds on big ones.
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    max_queue: int = Field(512, ge=0)  # waiting requests before "server busy" (Ollama: 512)
    max_in_flight: int = Field(1024, ge=1)  # concurrent upstream requests before queueing
    # Per-client rate limit on inference routes (429 + Retry-After); None: off. Client =
    # the peer address, or X-Forwarded-For's last untrusted hop when the peer is trusted.
    rate_limit_per_minute: int | None = Field(None, ge=1)
    rate_limit_burst: int = Field(10, ge=1)
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    # Request cost: bounds on what one request may ask for (400 above them).
    max_messages: int = Field(4096, ge=1)  # chat messages per request
    max_images: int = Field(64, ge=0)  # images per request (/api and /v1 alike)
    max_choices: int = Field(16, ge=1)  # `n` / `best_of`; each choice also takes a key slot
    max_aliases: int = Field(256, ge=0)  # aliases /api/copy may add while the server runs

    # Browsers (security/browser.py): Ollama's defaults plus these. Origins as Ollama's
    # OLLAMA_ORIGINS (`https://app.example.com`, `http://localhost:*`, `*`); hosts are extra
    # names accepted in `Host` while the façade listens on loopback (`*`: no check).
    allowed_origins: list[str] = Field(default_factory=list)
    allowed_hosts: list[str] = Field(default_factory=list)

    # HTTP connections (server/http.py): the façade is reachable without the proxy.
    max_header_bytes: int = Field(64 * 1024, ge=1024)  # request line + headers (431 above)
    max_headers: int = Field(100, ge=8)  # header fields per request (431 above)
    header_timeout_s: float = Field(10.0, gt=0)  # a request's headers must arrive in this (408)
    body_timeout_s: float = Field(60.0, gt=0)  # its body within this after the headers (408)
    keep_alive_s: float = Field(75.0, gt=0)  # idle keep-alive connections close after this
    max_connections: int = Field(2048, ge=1)  # open client connections (503 above)
    # Serve docs/openapi.json at /openapi.json (off: the surface stays exactly the APIs).
    openapi: bool = False

    # Upstream behaviour.
    connect_timeout_s: float = Field(5.0, gt=0)
    # The longest silence from an engine: between two stream chunks, or before a
    # non-streamed answer (which is silent for the whole generation). A hung engine's
    # requests fail after this and count against its breaker. None: wait forever.
    read_timeout_s: float | None = Field(600.0, gt=0)
    # Idle pooled connections to engines are dropped after this: below the engines' own
    # idle timeout (vLLM's VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s).
    upstream_keep_alive_s: float = Field(4.0, gt=0)
    health_interval_s: float = Field(2.0, gt=0)
    # An engine's /health answer may take this long (the check waits at least
    # connect_timeout_s too).
    health_timeout_s: float = Field(5.0, gt=0)
    # Health checks in a row that time out before a healthy engine is taken out: a busy
    # engine answers /health late (vLLM's API server shares its CPU with the detokenizer),
    # and one late answer must not turn readiness 503 and empty a gateway. A refused
    # connection or a non-200 answer takes it out at once.
    health_timeouts_to_fail: int = Field(3, ge=1)
    # Among replicas of a model (upstream/balancer.py): "load" (the engines' own running,
    # waiting and KV-cache figures from /metrics, polled with the health checks, plus
    # prefix affinity), "least-outstanding" (this process's count only), "round-robin".
    balancer: Literal["load", "least-outstanding", "round-robin"] = "load"
    # A conversation stays on the replica holding its prefix cache while that replica is
    # at most this much busier (in requests) than the least loaded one.
    affinity_slack: float = Field(4.0, ge=0)
    prefix_affinity: bool = True
    # The breaker opens on a failure rate over a sliding window, once the window holds
    # enough calls (as resilience4j does), not on a few failures among many successes.
    breaker_failure_rate: float = Field(0.5, gt=0, le=1)
    breaker_min_calls: int = Field(10, ge=1)
    breaker_window_s: float = Field(30.0, gt=0)
    breaker_reset_s: float = Field(5.0, gt=0)  # open -> half-open after this long
    retries: int = Field(2, ge=0)  # connection errors only, before the first byte
    drain_timeout_s: float = Field(30.0, ge=0)
    # On SIGTERM: this long /health/ready answers 503 "draining" while requests are still
    # taken, before the façade stops accepting; above the gateway's health-check interval,
    # so the gateway stops sending first. Ctrl-C (SIGINT) skips it.
    drain_delay_s: float = Field(0.0, ge=0)

    # Keys and logs.
    api_keys: list[ApiKey] = Field(default_factory=list)
    api_keys_file: Path | None = None
    # Administrators: pull, delete, copy/alias and anything else that changes the model
    # store or routing. Client keys (api_keys) only infer and read.
    admin_keys: list[ApiKey] = Field(default_factory=list)
    admin_keys_file: Path | None = None
    # auto: human-readable text on a terminal, JSON lines otherwise (systemd, compose, CI).
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: str = "INFO"

    # Supervised engines.
    engine_python: str | None = None  # interpreter with vLLM; None: this one
    engine_startup_timeout_s: float = Field(900.0, gt=0)  # first loads take minutes
    engine_grace_s: float = Field(10.0, ge=0)  # SIGTERM -> SIGKILL
    cache_dir: Path | None = None  # Hugging Face cache; None: the hub's default

    # Models over time (docs/lifecycle.md): engines `vllama serve` starts for pulled models
    # on their first request and stops after keep_alive, within a memory budget per device.
    on_demand: bool = True
    # Ollama's keep_alive (OLLAMA_KEEP_ALIVE): "5m", "1h", seconds; 0 unloads after each
    # request, negative keeps loaded. Requests override it with their own keep_alive.
    keep_alive: str | float = "5m"
    # The context (--max-model-len) an on-demand engine gets, at most the model's own
    # (Ollama's OLLAMA_CONTEXT_LENGTH); the KV cache is sized for `num_parallel` of them.
    context_length: int = Field(4096, ge=16)
    num_parallel: int = Field(4, ge=1)
    # Per device (each GPU; the host's memory on the CPU build): "90%" of it, or "20GiB".
    memory_budget: str = "90%"
    # Memory an engine takes besides weights and KV cache; None: per device kind
    # (lifecycle.memory.DEFAULT_OVERHEAD).
    engine_overhead: str | None = None
    # How long a request for a model that does not fit waits for busy engines to go idle.
    engine_wait_s: float = Field(60.0, ge=0)
    # vLLM's sleep mode (GPU builds): idle engines sleep and wake instead of restarting.
    sleep_mode: bool = True
    sleep_level: int = Field(1, ge=1, le=2)
    log_dir: Path = Path.home() / ".local" / "state" / "vllama" / "logs"
    state_dir: Path = Path.home() / ".local" / "state" / "vllama"

    # The version /api/version reports: Copilot and Open WebUI need >= 0.6.4.
    ollama_version: str = "0.9.0"

    @field_validator("keep_alive")
    @classmethod
    def _duration(cls, v: str | float) -> str | float:
        parse_duration(v)  # ValueError names what is wrong
        return v

    @field_validator("memory_budget")
    @classmethod
    def _budget(cls, v: str) -> str:
        text = v.strip()
        if text.endswith("%"):
            try:
                share = float(text[:-1])
            except ValueError:
                raise ValueError(f"{v!r} is not a share: write it as 90%") from None
            if not 0 < share <= 100:
                raise ValueError(
                    f"{v!r}: a share of the device's memory is above 0% and at most 100%"
                )
        else:
            parse_size(text)
        return text

    @field_validator("engine_overhead")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None:
            parse_size(v)
        return v

    def model_keep_alive_s(self) -> float:
        """The default keep_alive of models, in seconds (negative: forever). Not
        `keep_alive_s`, which is how long idle HTTP connections stay open."""
        return parse_duration(self.keep_alive)

    def resolve_alias(self, name: str) -> str:
        """What `name` means: a configured alias (with or without `:latest`), else a name
        from Ollama's library (vllama.names.LIBRARY), else `name` itself."""
        return resolve_name(self.aliases, name)


# --- loading ------------------------------------------------------------------------------

Source = str  # "default", "env VLLAMA_PORT", "file ./vllama.toml", "flag --port"


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vllama" / "config.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file or remove it") from exc


def _parse_env_value(field: str, raw: str) -> Any:
    """Env values are strings; lists and tables may be given as JSON or comma-separated."""
    annotation = Settings.model_fields[field].annotation
    text = str(annotation)
    if raw.startswith(("[", "{")):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{ENV_PREFIX}{field.upper()}: not valid JSON ({exc})") from exc
    if field == "engines":
        return [{"url": u.strip()} for u in raw.split(",") if u.strip()]
    if field in ("api_keys", "admin_keys"):
        prefix = "key" if field == "api_keys" else "admin"
        return [
            {"key": k.strip(), "name": f"{prefix}{i}"}
            for i, k in enumerate(raw.split(","))
            if k.strip()
        ]
    if field == "aliases":
        pairs = (p.split("=", 1) for p in raw.split(",") if "=" in p)
        return {k.strip(): v.strip() for k, v in pairs}
    if "list" in text:
        return [p.strip() for p in raw.split(",") if p.strip()]
    return raw


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in Settings.model_fields:
        raw = environ.get(f"{ENV_PREFIX}{field.upper()}")
        if raw is not None:
            out[field] = _parse_env_value(field, raw)
    return out


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    config_file: Path | None = None,
) -> tuple[Settings, dict[str, Source]]:
    """Merge every layer; return the settings and, per top-level field, where it came from.

    `flags` holds only the options the user actually gave (None values are dropped).
    `config_file` (from `--config`) replaces the ./vllama.toml lookup.
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    layers: list[tuple[Source, dict[str, Any]]] = []
    user_file = user_config_path()
    if user_file.is_file():
        layers.append((f"file {user_file}", _read_toml(user_file)))
    local_file = config_file if config_file is not None else cwd / "vllama.toml"
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    if local_file.is_file():
        layers.append((f"file {local_file}", _read_toml(local_file)))
    layers.append(("env", env_overrides(environ)))
    layers.append(("flag", {k: v for k, v in (flags or {}).items() if v is not None}))

    merged: dict[str, Any] = {}
    sources: dict[str, Source] = {name: "default" for name in Settings.model_fields}
    for source, values in layers:
        for key, value in values.items():
            if key not in Settings.model_fields:
                raise ConfigError(
                    f"unknown setting {key!r} from {source}; `vllama config` lists the valid ones"
                )
            merged[key] = value
            sources[key] = f"env {ENV_PREFIX}{key.upper()}" if source == "env" else source
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (from {sources.get(str(err['loc'][0]), '?')})"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
    return settings, sources


def parse_plan(text: str, where: str) -> HostPlan:
    """A host's declaration from TOML or JSON text: the `[plan]` table of a config file,
    or the table itself (what Ansible hands over as JSON)."""
    data: Any
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc})") from exc
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: neither JSON nor valid TOML ({exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("plan"), dict):
        data = data["plan"]
    try:
        return HostPlan.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'plan'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{where}: invalid plan: {problems}") from exc


def load_plan_file(path: Path) -> HostPlan:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the plan file {path}: {exc.strerror}") from exc
    return parse_plan(text, str(path))
