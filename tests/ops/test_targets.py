"""Scrape targets and ports come from one table (monitoring/prometheus/build_targets.py):
the compose target files and the Ansible target templates are what it writes, and every
other file that writes one of its ports is on the ledger below and writes the table's
number. Changing a port in the table fails here, naming each file still to follow."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml

from vllama.config import DEFAULT_PORT

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "monitoring" / "prometheus"

# Every file outside the table's own outputs, tests and prose that writes a port, and how
# many times, by port: a copy changed alone, or a new one, fails. A new copy must be added
# here (and should read the fact from somewhere instead, if it can).
LEDGER: dict[str, dict[str, int]] = {
    "facade": {
        "Makefile": 1,
        "app/vllama/bench/load.py": 1,
        "app/vllama/cli/config_cmd.py": 1,
        "app/vllama/cli/main.py": 1,
        "app/vllama/config.py": 1,
        "compose/.env.example": 1,
        "compose/cluster.yaml": 2,
        "compose/compose.yaml": 5,
        "images/Dockerfile": 9,
        "monitoring/prometheus/tests/vllama-alerts.test.yml": 5,
        "monitoring/prometheus/tests/vllm-alerts.test.yml": 2,
        "ops/ansible/roles/vllama/defaults/main.yml": 1,
        "ops/ansible/roles/vllama_compose/defaults/main.yml": 1,
        "ops/ansible/roles/vllama_engines/tasks/cluster.yml": 1,
        "ops/ansible/roles/vllama_proxy/templates/caddy-env.conf.j2": 1,
        "proxy/caddy/Caddyfile": 1,
        "proxy/nginx/render-templates.sh": 1,
    },
    "engine": {
        "app/vllama/cli/config_cmd.py": 1,
        "app/vllama/cli/engine_cmd.py": 1,
        "compose/.env.example": 4,
        "compose/cluster.yaml": 2,
        "compose/compose.yaml": 4,
        "images/Dockerfile": 3,
        "monitoring/prometheus/tests/vllama-alerts.test.yml": 1,
        "monitoring/prometheus/tests/vllm-alerts.test.yml": 32,
        "ops/ansible/filter_plugins/vllama_plan.py": 1,
        "ops/ansible/roles/vllama/defaults/main.yml": 1,
    },
    "proxy_metrics": {
        "compose/compose.yaml": 2,
        "compose/nginx.yaml": 2,
        "ops/ansible/roles/vllama_monitoring/defaults/main.yml": 1,
        "ops/ansible/roles/vllama_proxy/defaults/main.yml": 1,
        "proxy/caddy/Caddyfile": 1,
        "proxy/nginx/render-templates.sh": 1,
    },
    "prometheus": {
        "compose/.env.example": 1,
        "compose/compose.yaml": 4,
        "monitoring/grafana/provisioning/datasources/prometheus.yml": 1,
        "ops/ansible/roles/vllama_monitoring/defaults/main.yml": 2,
    },
    "alertmanager": {
        "compose/.env.example": 1,
        "compose/compose.yaml": 4,
        "ops/ansible/roles/vllama_monitoring/defaults/main.yml": 1,
    },
    "node_exporter": {
        "compose/compose.yaml": 2,
        "monitoring/prometheus/tests/vllama-alerts.test.yml": 11,
        "ops/ansible/roles/vllama_monitoring/defaults/main.yml": 1,
    },
    "dcgm_exporter": {
        "compose/.env.example": 1,
        "compose/compose.yaml": 2,
        "monitoring/prometheus/tests/gpu-alerts.test.yml": 32,
        "monitoring/prometheus/tests/vllama-alerts.test.yml": 1,
        "ops/ansible/roles/vllama_dcgm/defaults/main.yml": 1,
        "ops/ansible/roles/vllama_monitoring/defaults/main.yml": 1,
        "ops/gpu_check.py": 2,
    },
}


def build_targets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_targets", PROMETHEUS / "build_targets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_target_files_are_what_the_table_writes() -> None:
    for path, text in build_targets().rendered().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(REPO)} is stale: run python3 monitoring/prometheus/build_targets.py"
        )


def test_every_job_is_scraped_and_written_by_ansible() -> None:
    jobs = {job.name for job in build_targets().JOBS}
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    files = {
        Path(f).stem
        for job in config["scrape_configs"]
        for sd in job.get("file_sd_configs", [])
        for f in sd["files"]
    }
    assert files == jobs
    tasks = yaml.safe_load(
        (REPO / "ops/ansible/roles/vllama_monitoring/tasks/prometheus.yml").read_text()
    )
    (loop,) = [t["loop"] for t in tasks if "targets/{{ item }}.yml.j2" in str(t)]
    assert set(loop) == jobs
    written = {p.name.removesuffix(".yml") for p in (PROMETHEUS / "targets").glob("*.yml")}
    assert written == jobs


def test_every_copy_of_a_port_is_on_the_ledger_and_the_tables() -> None:
    ports = build_targets().PORTS
    assert ports["facade"] == DEFAULT_PORT
    assert set(LEDGER) == set(ports)
    scanned = [
        f
        for f in tracked_files()
        if not f.startswith(("tests/", "docs/", "monitoring/prometheus/targets/"))
        and not f.startswith("ops/ansible/roles/vllama_monitoring/templates/targets/")
        and not f.endswith((".md", ".json", ".lock"))
        and f != "monitoring/prometheus/build_targets.py"
    ]
    texts = {f: (REPO / f).read_text(encoding="utf-8", errors="replace") for f in scanned}
    for name, port in ports.items():
        pattern = re.compile(rf"(?<![\w.]){port}(?![\w.])")
        found = {f: n for f, text in texts.items() if (n := len(pattern.findall(text)))}
        differ = {
            f: (found.get(f, 0), LEDGER[name].get(f, 0))
            for f in found.keys() | LEDGER[name].keys()
            if found.get(f, 0) != LEDGER[name].get(f, 0)
        }
        assert not differ, f"port {name} = {port}, copies found vs on the ledger: {differ}"


def test_ansible_defaults_take_their_ports_from_the_table() -> None:
    ports = build_targets().PORTS
    defaults = yaml.safe_load(
        (REPO / "ops/ansible/roles/vllama_monitoring/defaults/main.yml").read_text()
    )
    assert defaults["vllama_monitoring_prometheus_port"] == ports["prometheus"]
    assert defaults["vllama_monitoring_alertmanager_port"] == ports["alertmanager"]
    assert defaults["vllama_monitoring_node_exporter_port"] == ports["node_exporter"]
    assert defaults["vllama_monitoring_proxy_metrics_port"] == ports["proxy_metrics"]
    assert defaults["vllama_monitoring_dcgm_port"] == ports["dcgm_exporter"]
    role = yaml.safe_load((REPO / "ops/ansible/roles/vllama/defaults/main.yml").read_text())
    assert role["vllama_port"] == ports["facade"]
    dcgm = yaml.safe_load((REPO / "ops/ansible/roles/vllama_dcgm/defaults/main.yml").read_text())
    assert dcgm["vllama_dcgm_port"] == ports["dcgm_exporter"]
