"""compose/cluster.yaml: one Docker host's share of a model larger than one host, resolved by
the real compose binary. Its flags are the ones Ansible's vllama_cluster derives
(tests/ops/test_ansible_plan.py holds the same expectation); the shares run on the host's
network with what NCCL and RDMA need; the workers run headless, the head's façade fronts
its engine. Run for real here: tests/fleet/test_cluster.py forms the same cluster from
Ansible on two systemd hosts (compose on two GPU hosts was not run)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.containers.test_static import _env, _seconds, resolved
from vllama.cli.engine_cmd import parse_flags

pytestmark = pytest.mark.timeout(300)

FILES = ("cluster.yaml",)
# The declaration of tests/ops/test_ansible_plan.py's CLUSTER, as .env values.
ENV = {
    "VLLAMA_MODEL": "meta-llama/Llama-3.1-405B-Instruct",
    "VLLAMA_SERVED_NAME": "llama3.1:405b",
    "VLLAMA_CLUSTER_MASTER_ADDR": "10.1.0.11",
    "VLLAMA_CLUSTER_TP": "8",
    "VLLAMA_CLUSTER_PP": "2",
    "VLLAMA_CLUSTER_ENGINE_ARGS": "--max-model-len 32768",
}
COMMON = [
    "--max-model-len", "32768", "--tensor-parallel-size", "8",
    "--pipeline-parallel-size", "2", "--distributed-executor-backend", "mp",
    "--nnodes", "2",
]  # fmt: skip
RENDEZVOUS = ["--master-addr", "10.1.0.11", "--master-port", "29500"]


def _flags(svc: dict[str, Any]) -> list[str]:
    return parse_flags(_env(svc)["VLLAMA_ENGINE_ARGS"], "VLLAMA_ENGINE_ARGS")


def _share_policies(svc: dict[str, Any]) -> None:
    assert svc["network_mode"] == "host" and svc["ipc"] == "host"
    assert svc["cap_add"] == ["IPC_LOCK"]
    assert svc["ulimits"]["memlock"] in (-1, {"soft": -1, "hard": -1}), svc["ulimits"]
    assert svc["restart"] == "always" and svc["init"] is True
    assert _seconds(svc["stop_grace_period"]) >= 60
    assert svc["healthcheck"]["test"] and not svc["healthcheck"].get("disable")
    assert svc["entrypoint"] == ["vllama", "engine"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    env = _env(svc)
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLAMA_ENGINE_HOST"] == "127.0.0.1"
    assert env["VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"] == "60"
    assert svc["depends_on"]["pull"]["condition"] == "service_completed_successfully"
    image = svc["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


def test_the_head_runs_rank_0_and_its_facade_fronts_it() -> None:
    services = resolved(["head"], FILES, env=ENV)["services"]
    assert set(services) == {"pull", "engine-head", "vllama"}
    head = services["engine-head"]
    _share_policies(head)
    assert _flags(head) == [*COMMON, *RENDEZVOUS, "--node-rank", "0"]
    facade = services["vllama"]
    assert _env(facade)["VLLAMA_ENGINES"] == "http://127.0.0.1:8000"
    assert _env(facade)["VLLAMA_HOST"] == "127.0.0.1"  # .env.example keeps it on the host
    assert facade["depends_on"]["engine-head"]["condition"] == "service_healthy"


def test_a_worker_runs_its_rank_headless_and_no_facade() -> None:
    services = resolved(["worker"], FILES, env={**ENV, "VLLAMA_CLUSTER_RANK": "1"})["services"]
    assert set(services) == {"pull", "engine-worker"}
    worker = services["engine-worker"]
    _share_policies(worker)
    assert _flags(worker) == [*COMMON, *RENDEZVOUS, "--node-rank", "1", "--headless"]


def test_rdma_adds_the_verbs_devices_to_every_share() -> None:
    for profile in ("head", "worker"):
        services = resolved([profile], (*FILES, "cluster-rdma.yaml"), env=ENV)["services"]
        share = services[f"engine-{profile}"]
        assert [d["source"] for d in share["devices"]] == ["/dev/infiniband"], share["devices"]
