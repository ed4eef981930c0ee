#!/usr/bin/env python3
"""Write Prometheus' scrape-target files for both deploy modes from the one table below.

- compose: monitoring/prometheus/targets/<job>.yml, the services' names and ports (compose
  mounts the folder as is);
- Ansible: ops/ansible/roles/vllama_monitoring/templates/targets/<job>.yml.j2, the same jobs
  built from the inventory's hosts.

PORTS holds every default port of the stack, once; tests/ops/test_targets.py fails when a
written file differs from what this prints, and when another file (compose, the images,
the proxies, the Ansible defaults, the façade's config) writes a port other than the
table's. Run it after editing. Standard library only.

    python3 monitoring/prometheus/build_targets.py
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
COMPOSE_DIR = HERE / "targets"
ANSIBLE_DIR = REPO / "ops" / "ansible" / "roles" / "vllama_monitoring" / "templates" / "targets"

# Every default port of the stack (listen ports inside a container or on a host).
PORTS = {
    "facade": 11434,  # Ollama's port: every Ollama client's default (vllama.config.DEFAULT_PORT)
    "engine": 8000,  # vLLM's OpenAI server
    "proxy_metrics": 2020,  # the proxy's separate metrics listener (Caddy; Nginx stub_status)
    "prometheus": 9090,
    "alertmanager": 9093,
    "node_exporter": 9100,
    "dcgm_exporter": 9400,
}

# The inventory address of host h, as every template writes it.
_ADDR = (
    "{% macro addr(h) %}{{ hostvars[h].vllama_address | default(hostvars[h].ansible_host"
    " | default(h)) }}{% endmacro %}"
)


@dataclass(frozen=True)
class Job:
    name: str  # Prometheus' job and the file's name
    service: str  # the compose service (network alias) that serves it
    port: str  # a key of PORTS
    hosts: str  # Ansible: the Jinja list of hosts it runs on
    port_expr: str  # Ansible: the Jinja expression of its port on host h (engine e, if per_engine)
    per_engine: bool = False  # Ansible: one target per engine the host runs (plan or list)
    host_label: bool = True  # Ansible: label each target with its inventory host
    labels: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # comment lines in both files


JOBS = (
    Job("prometheus", "prometheus", "prometheus", "", "vllama_monitoring_prometheus_port"),
    Job(
        "vllama",
        "vllama",
        "facade",
        "groups[vllama_monitoring_gpu_group] | default([]) | vllama_facade_hosts(hostvars)",
        f"hostvars[h].vllama_port | default({PORTS['facade']})",
    ),
    Job(
        "vllm",
        "vllm",
        "engine",
        "groups[vllama_monitoring_gpu_group] | default([])",
        "e.port",
        per_engine=True,
        notes=("One entry per engine: the same host:port the façade reports in its engine label.",),
    ),
    Job(
        "node",
        "node-exporter",
        "node_exporter",
        "groups['all']",
        "vllama_monitoring_node_exporter_port",
    ),
    Job(
        "dcgm",
        "dcgm-exporter",
        "dcgm_exporter",
        "(groups[vllama_monitoring_gpu_group] | default([]) | vllama_dcgm_hosts(hostvars))"
        " if vllama_monitoring_dcgm | bool else []",
        "hostvars[h].vllama_dcgm_port | default(vllama_monitoring_dcgm_port)",
        notes=(
            "The GPU hosts that run the exporter (role vllama_dcgm, or compose's gpu profile);",
            "empty on CPU-only fleets: the GPU alerts then stay silent.",
        ),
    ),
    Job(
        "proxy",
        "proxy",
        "proxy_metrics",
        "groups[vllama_monitoring_gateway_group] | default([])",
        "vllama_monitoring_proxy_metrics_port",
        labels={"proxy": "caddy"},
        notes=(
            "Caddy (proxy/caddy/Caddyfile) serves its metrics on a separate listener",
            "(VLLAMA_PROXY_METRICS_PORT). For Nginx point this at nginx-prometheus-exporter",
            "(:9113), which reads the stub_status page Nginx serves on that same listener.",
        ),
    ),
    Job(
        "alertmanager",
        "alertmanager",
        "alertmanager",
        "groups[vllama_monitoring_monitoring_group] | default([])",
        "vllama_monitoring_alertmanager_port",
        host_label=False,
    ),
)

_GENERATED = (
    "Written by monitoring/prometheus/build_targets.py from its table; edit that, not this."
)


def compose_file(job: Job) -> str:
    lines = [f"# {_GENERATED}", "# Compose: the services' names. Ansible writes its own per host."]
    lines += [f"# {n}" for n in job.notes]
    lines.append(f"- targets: [{job.service}:{PORTS[job.port]}]")
    if job.labels:
        lines.append("  labels:")
        lines += [f"    {k}: {v}" for k, v in job.labels.items()]
    return "\n".join(lines) + "\n"


def _labels(job: Job, extra: dict[str, str]) -> str:
    pairs = ['host: "{{ h }}"'] if job.host_label else []
    pairs += [f'{k}: "{v}"' for k, v in extra.items()]
    pairs += [f"{k}: {v}" for k, v in job.labels.items()]
    return "  labels: {" + ", ".join(pairs) + "}\n" if pairs else ""


def ansible_template(job: Job) -> str:
    head = "# {{ ansible_managed }}\n" + f"# {_GENERATED}\n"
    head += "".join(f"# {n}\n" for n in job.notes)
    if not job.hosts:  # Prometheus scrapes itself on its own host
        return head + f'- targets: ["127.0.0.1:{{{{ {job.port_expr} }}}}"]\n'
    target = f'- targets: ["{{{{ addr(h) }}}}:{{{{ {job.port_expr} }}}}"]\n'
    body = head + _ADDR + "\n" + "{% set ns = namespace(n=0) %}\n"
    body += f"{{% set hosts = {job.hosts} %}}\n" + "{% for h in hosts %}\n"
    if job.per_engine:
        # The host's engines from its vllama_plan, vllama_engines or vllama_cluster
        # (ops/ansible/filter_plugins); a cluster's headless workers serve no /metrics.
        body += "{% for e in hostvars[h] | vllama_served_engines_of %}\n"
        body += "{% set ns.n = ns.n + 1 %}\n" + target
        body += _labels(job, {"model_unit": "{{ e.name }}"})
        body += "{% endfor %}\n"
    else:
        body += "{% set ns.n = ns.n + 1 %}\n" + target + _labels(job, {})
    body += "{% endfor %}\n"
    return body + "{% if ns.n == 0 %}\n[]\n{% endif %}\n"


def rendered() -> dict[Path, str]:
    out: dict[Path, str] = {}
    for job in JOBS:
        out[COMPOSE_DIR / f"{job.name}.yml"] = compose_file(job)
        out[ANSIBLE_DIR / f"{job.name}.yml.j2"] = ansible_template(job)
    return out


def main() -> int:
    for path, text in rendered().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
