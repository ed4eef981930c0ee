"""`vllama config`: a commented example config; `vllama config --show`: the merged settings
and where each value came from (flag, env, file, default)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vllama.cli.output import OK, emit_json, table
from vllama.config import Settings, user_config_path

# One line per setting; the order is the order of the example file.
DESCRIPTIONS: dict[str, str] = {
    "host": "Address the façade listens on. 0.0.0.0 exposes it: put the TLS proxy in front.",
    "port": "Port of the façade; 11434 is Ollama's, so every Ollama client finds it.",
    "workers": "Façade worker processes sharing the port; more than 1 only in front of engines that run on their own (--engine, [[engines]], [plan]).",
    "metrics_dir": "With workers > 1: prometheus-client's multiprocess folder (emptied at start); unset: a fresh temporary folder.",
    "max_body_bytes": "Largest request body accepted (413 above it).",
    "max_image_pixels": "Pixels of one image in a request (its header says); larger ones are a 400.",
    "max_queue": "Requests allowed to wait for a free slot before 503 'server busy'.",
    "max_in_flight": "Concurrent upstream requests before new ones queue.",
    "rate_limit_per_minute": "Per-client requests per minute on inference routes (429 above it); unset: off.",
    "rate_limit_burst": "Requests a client may send at once above its rate.",
    "trusted_proxies": "Peers whose X-Forwarded-For names the real client.",
    "max_messages": "Chat messages one request may carry (400 above it).",
    "max_images": "Images one request may carry (400 above it).",
    "max_choices": "Largest n / best_of (400 above it); each choice counts against a key's max_concurrency.",
    "max_aliases": "Aliases /api/copy may add while the server runs (400 above it).",
    "allowed_origins": "Web origins allowed besides Ollama's defaults (like OLLAMA_ORIGINS; '*': any).",
    "allowed_hosts": "Host names accepted while listening on loopback, besides Ollama's local ones ('*': any).",
    "max_header_bytes": "Largest request line + headers (431 above it).",
    "max_headers": "Most header fields in one request (431 above it).",
    "header_timeout_s": "Seconds a client has to send a request's headers (408, then closed).",
    "body_timeout_s": "Seconds a client has to send a request's body after its headers (408).",
    "keep_alive_s": "Seconds an idle keep-alive connection stays open (above the proxy's own idle timeout).",
    "max_connections": "Open client connections (503 above it).",
    "openapi": "Serve the OpenAPI document (docs/openapi.json) at /openapi.json.",
    "connect_timeout_s": "Seconds to connect to an engine.",
    "read_timeout_s": "Longest silence from an engine, in seconds (a non-streamed answer is silent for its whole generation); unset: no limit.",
    "upstream_keep_alive_s": "Seconds an idle connection to an engine is kept (below vLLM's 5 s).",
    "health_interval_s": "Seconds between engine health checks (and load polls of replicated engines).",
    "health_timeout_s": "Seconds an engine's /health answer may take (at least connect_timeout_s).",
    "health_timeouts_to_fail": "Health checks in a row that time out before a healthy engine is taken out.",
    "balancer": "Among replicas of a model: load (the engines' own load from /metrics, with prefix affinity), least-outstanding, or round-robin.",
    "affinity_slack": "A conversation leaves its replica only when that one is more than this many requests (and 1.5 times) busier than the least loaded.",
    "prefix_affinity": "Keep a conversation on the replica that holds its prefix cache (balancer = load).",
    "breaker_failure_rate": "Failure rate (0-1) over the window that takes an engine out (circuit breaker opens).",
    "breaker_min_calls": "Calls the window must hold before the failure rate counts.",
    "breaker_window_s": "Seconds of calls the failure rate is taken over.",
    "breaker_reset_s": "Seconds before an open breaker lets a trial request through.",
    "retries": "Retries on connection errors, only before the first byte reached the client.",
    "drain_timeout_s": "On SIGTERM/Ctrl-C: seconds in-flight requests get to finish.",
    "drain_delay_s": "On SIGTERM: seconds /health/ready says 'draining' while requests are still taken, before new connections are refused (above the gateway's health-check interval).",
    "api_keys_file": "File of `name:key[:max_concurrency[:priority]]` lines: keys kept out of this file.",
    "admin_keys_file": "File of admin keys (same format): pull, delete, copy and routing changes need one.",
    "log_format": "auto (text on a terminal, JSON lines otherwise), json or text.",
    "log_level": "DEBUG, INFO, WARNING or ERROR.",
    "engine_python": "Python interpreter that has vLLM, for supervised engines; unset: this one.",
    "engine_startup_timeout_s": "Seconds a supervised engine may take to load (first loads take minutes).",
    "engine_grace_s": "Seconds between SIGTERM and SIGKILL when stopping an engine.",
    "cache_dir": "Model cache (Hugging Face layout); unset: the hub's default (HF_HUB_CACHE).",
    "on_demand": "Start an engine for a pulled model on its first request, stop it after keep_alive.",
    "keep_alive": "How long an idle on-demand engine stays loaded (5m, 1h, seconds; 0: unload after each request; negative: keep).",
    "context_length": "Context (--max-model-len) of on-demand engines, at most the model's own.",
    "num_parallel": "Full-length sequences the KV cache of an on-demand engine is sized for.",
    "memory_budget": "Memory per device (each GPU; host memory on the CPU build) engines may take: 90% or 20GiB.",
    "engine_overhead": "Memory an engine takes besides weights and KV cache (e.g. 2GiB); unset: per device kind.",
    "engine_wait_s": "Seconds a request for a model that does not fit waits for busy engines before a 503.",
    "sleep_mode": "GPU builds: put idle engines to sleep (vLLM's sleep mode) instead of stopping them.",
    "sleep_level": "Sleep level: 1 keeps weights in host memory (fast wake), 2 drops them.",
    "log_dir": "Where supervised engines' logs rotate.",
    "state_dir": "vllama's own state.",
    "ollama_version": "Version /api/version reports (clients such as Copilot need >= 0.6.4).",
}

_TABLES = """\
# Friendly model names, the same on /api and /v1 (`name:latest` works too). They add to
# (and win over) the built-in table of Ollama library names (docs/lifecycle.md).
[aliases]
"qwen2.5:0.5b" = "Qwen/Qwen2.5-0.5B-Instruct"

# Engines that are already running (`vllama serve --engine URL` adds to none of these:
# flags replace the whole list). Models are discovered from GET /v1/models.
#[[engines]]
#url = "http://127.0.0.1:8000"
#models = []                       # empty: discover
#api_key = "engine-secret"         # if the engine was started with --api-key
#capabilities = ["tools"]          # unset: detected (probed); a list overrides: tools, thinking, vision

# Models `vllama serve` starts supervised engines for (like --model).
#[[models]]
#model = "Qwen/Qwen2.5-0.5B-Instruct"
#served_name = "qwen2.5:0.5b"
#engine_args = ["--max-model-len", "8192", "--enable-prefix-caching"]
#port = 8001                        # unset: a free port

# This host's GPUs, declared once (`vllama plan` shows the engines it yields; the façade
# fronts them; `vllama engine --planned NAME` runs one). Here: one TP=4 engine on GPUs 0-3
# and one engine per GPU on the other four.
#[plan]
#gpus = 8                          # a count, or the device ids: [0, 1, 2, 3]
#base_port = 8001                  # engines without a port take 8001, 8002, ...
#engine_host = "127.0.0.1"         # 0.0.0.0: Prometheus on another host scrapes them
#[[plan.engines]]
#model = "Qwen/Qwen2.5-72B-Instruct"
#served_name = "qwen2.5:72b"
#tensor_parallel_size = 4
#[[plan.engines]]
#model = "Qwen/Qwen2.5-7B-Instruct"
#served_name = "qwen2.5:7b"
#replicas = "fill"                 # one engine per GPU left
#args = ["--max-model-len", "8192"]

# Client keys. With any key set, every route but /, /api/version and /health* needs one.
#[[api_keys]]
#key = "change-me-to-a-long-random-string"
#name = "team-a"                   # shown in logs and metrics instead of the key
#max_concurrency = 8
#priority = 0                      # vLLM priority scheduling: lower runs first

# Admin keys: pull, delete, copy/alias and routing changes (client keys only infer and read).
#[[admin_keys]]
#key = "another-long-random-string"
#name = "ops"
"""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def example_config() -> str:
    """The example file: every scalar setting at its default, with a comment each."""
    defaults = Settings.model_validate({})
    lines = [
        "# vllama configuration. Precedence: flags > env VLLAMA_<NAME> > ./vllama.toml >",
        f"# {user_config_path()} > defaults. `vllama config --show` prints the result.",
        "",
    ]
    for name, text in DESCRIPTIONS.items():
        value = getattr(defaults, name)
        lines.append(f"# {text}")
        if value is None:
            hint = {
                "cache_dir": '"/var/cache/vllama/models"',
                "api_keys_file": '"/etc/vllama/keys"',
                "admin_keys_file": '"/etc/vllama/admin-keys"',
                "engine_python": '"/opt/vllm/bin/python"',
                "rate_limit_per_minute": "600",
                "engine_overhead": '"2GiB"',
                "metrics_dir": '"/run/vllama/metrics"',
            }
            lines.append(f"#{name} = {hint.get(name, '...')}")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines) + _TABLES


def print_example() -> int:
    print(example_config(), end="")
    return OK


def _masked(settings: Settings) -> dict[str, Any]:
    data = settings.model_dump(mode="json")
    for field in ("api_keys", "admin_keys"):
        data[field] = [{**k, "key": "***"} for k in data.get(field, [])]
    for engine in data.get("engines", []):
        if engine.get("api_key"):
            engine["api_key"] = "***"
    return data


def run(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    data = _masked(settings)
    if args.json:
        emit_json({"settings": data, "sources": sources})
        return OK
    rows = [["SETTING", "VALUE", "SOURCE"]]
    rows += [[k, json.dumps(v), sources.get(k, "default")] for k, v in data.items()]
    print(table(rows))
    return OK
