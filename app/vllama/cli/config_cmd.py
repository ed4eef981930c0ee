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
    "workers": "uvicorn worker processes (1 is right with supervised engines).",
    "max_body_bytes": "Largest request body accepted (413 above it).",
    "max_image_pixels": "Pixels of one image in a request (its header says); larger ones are a 400.",
    "max_queue": "Requests allowed to wait for a free slot before 503 'server busy'.",
    "max_in_flight": "Concurrent upstream requests before new ones queue.",
    "rate_limit_per_minute": "Per-client requests per minute on inference routes (429 above it); unset: off.",
    "rate_limit_burst": "Requests a client may send at once above its rate.",
    "trusted_proxies": "Peers whose X-Forwarded-For names the real client.",
    "connect_timeout_s": "Seconds to connect to an engine.",
    "read_timeout_s": "Seconds to wait for engine bytes; unset: no limit (long generations).",
    "health_interval_s": "Seconds between engine health checks.",
    "breaker_failures": "Consecutive failures that take an engine out (circuit breaker opens).",
    "breaker_reset_s": "Seconds before an open breaker lets a trial request through.",
    "retries": "Retries on connection errors, only before the first byte reached the client.",
    "drain_timeout_s": "On SIGTERM/Ctrl-C: seconds in-flight requests get to finish.",
    "api_keys_file": "File of `name:key[:max_concurrency[:priority]]` lines: keys kept out of this file.",
    "log_format": "json (one object a line) or text.",
    "log_level": "DEBUG, INFO, WARNING or ERROR.",
    "engine_python": "Python interpreter that has vLLM, for supervised engines; unset: this one.",
    "engine_startup_timeout_s": "Seconds a supervised engine may take to load (first loads take minutes).",
    "engine_grace_s": "Seconds between SIGTERM and SIGKILL when stopping an engine.",
    "cache_dir": "Model cache (Hugging Face layout); unset: the hub's default (HF_HUB_CACHE).",
    "log_dir": "Where supervised engines' logs rotate.",
    "state_dir": "vllama's own state.",
    "ollama_version": "Version /api/version reports (clients such as Copilot need >= 0.6.4).",
}

_TABLES = """\
# Friendly model names, the same on /api and /v1 (`name:latest` works too).
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

# Client keys. With any key set, every route but /, /api/version and /health* needs one.
#[[api_keys]]
#key = "change-me-to-a-long-random-string"
#name = "team-a"                   # shown in logs and metrics instead of the key
#max_concurrency = 8
#priority = 0                      # vLLM priority scheduling: lower runs first
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
                "engine_python": '"/opt/vllm/bin/python"',
                "rate_limit_per_minute": "600",
                "read_timeout_s": "600.0",
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
    data["api_keys"] = [{**k, "key": "***"} for k in data.get("api_keys", [])]
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
