"""A model larger than one host (issue 14, item 6): vLLM's native multi-node mode over two
hosts, deployed by the real `deploy.yml` from one `vllama_cluster` declaration.

Two systemd hosts in containers (tests/ops/systemd_host.py) on Docker's bridge network, each
a native-mode host with the CPU build; the demo model (two layers) is split by pipeline
parallelism (PP=2) over them: the head runs vLLM's OpenAI server, its façade serves the
model, the worker runs headless (vLLM's serve command, no HTTP, no façade on its host).
The rollout is the operator's default (`serial` 1): the head's host is deployed first, and
its engine can only answer once the worker's host is. Then: chats through the head's
façade, a second run changes nothing, and a worker killed under the cluster's feet: the
head notices at its next step (VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS), both units come back
(Restart=always) and the cluster forms again by itself.

    VLLAMA_FLEET=1 .venv/bin/python -m pytest tests/fleet/test_cluster.py -s
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fleet.hosts import Fleet, address, fleet_hosts
from tests.hub import DEMO_REPO, Hub
from tests.ops.systemd_host import Host, run_playbook
from tests.ops.test_ansible import DEFAULT_MAX_TOKENS

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3600)]

HEAD, WORKER = "node-a", "node-b"
ENGINE = "demo"
ENGINE_PORT = 8001
# The head fails a step its worker does not answer after this long (vLLM's default 300 s),
# exits, and systemd restarts it: the cluster forms again. Shorter here to keep the test short.
STEP_TIMEOUT_S = 30
# Compiled, not --enforce-eager: the CPU build's eager mode fails a later pipeline stage's
# first request (the filter refuses it); the hosts get g++ (vllama_host_compiler_packages).
ENGINE_ARGS = [
    "--max-model-len", "512", "--dtype", "bfloat16", "--seed", "0",
    "--override-generation-config", json.dumps({"max_new_tokens": DEFAULT_MAX_TOKENS}),
]  # fmt: skip


def _declaration(hosts: dict[str, Host]) -> dict[str, Any]:
    return {
        "vllama_cluster": {
            "name": ENGINE,
            "model": DEMO_REPO,
            "served_name": "vllama-demo",
            "hosts": [HEAD, WORKER],
            # The head's address on the network both hosts share.
            "master_addr": address(hosts[HEAD]),
            "pipeline_parallel_size": 2,
            "port": ENGINE_PORT,
            "args": ENGINE_ARGS,
            # Two shares on two cores: a small KV cache each, no CPU binding.
            "env": {
                "VLLM_CPU_KVCACHE_SPACE": "1",
                "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": str(STEP_TIMEOUT_S),
            },
        }
    }


def _recap(output: str) -> dict[str, tuple[int, int]]:
    """(changed, failed) per host from PLAY RECAP."""
    found = re.findall(
        r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", output, re.M
    )
    return {h: (int(c), int(f)) for h, c, f in found}


@pytest.fixture(scope="module")
def cluster(hub: Hub) -> Iterator[Fleet]:
    with fleet_hosts(hub, "cluster", (HEAD, WORKER), _declaration) as fleet:
        # The operator's default rollout: one host at a time, the head's first.
        first = run_playbook(fleet.bin_dir, fleet.inventory, timeout=3000)
        print(f"first deploy of a 2-host cluster (serial 1): {first.seconds:.0f}s")
        assert first.rc == 0, first.output[-8000:]
        yield fleet


def _chat(url: str, timeout: float = 120) -> dict[str, Any]:
    body = {
        "model": "vllama-demo",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": False,
        "options": {"num_predict": 8},
    }
    res = httpx.post(f"{url}/api/chat", json=body, timeout=timeout)
    assert res.status_code == 200, res.text
    return dict(res.json())


def _engine_completion(host: Host) -> dict[str, Any]:
    """A completion straight from the head's engine (inside its host: never published)."""
    script = (
        "import json, urllib.request; "
        f"r = urllib.request.Request('http://127.0.0.1:{ENGINE_PORT}/v1/completions', "
        "data=json.dumps({'model': 'vllama-demo', 'prompt': 'hi', 'max_tokens': 4}).encode(), "
        "headers={'content-type': 'application/json'}); "
        "print(urllib.request.urlopen(r, timeout=60).read().decode())"
    )
    res = host.sh(f'/opt/vllama/venv/bin/python -c "{script}"', timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    return dict(json.loads(res.stdout))


def test_the_cluster_forms_and_the_heads_facade_serves_it(cluster: Fleet) -> None:
    head, worker = cluster.hosts[HEAD], cluster.hosts[WORKER]
    answer = _chat(cluster.facade(HEAD))
    assert answer["done"] is True and answer["message"]["content"], answer
    assert answer["eval_count"] > 0
    # The engine that answered is vLLM's, pipeline-parallel over two ranks.
    completion = _engine_completion(head)
    assert "pp2" in completion["system_fingerprint"], completion
    # Each host runs its share of the one unit; the worker runs vLLM's headless executor
    # and no façade (nothing to front, and none to load models onto the cluster's GPUs).
    unit = f"vllama-engine@{ENGINE}.service"
    assert head.show(unit, "ActiveState") == worker.show(unit, "ActiveState") == "active"
    assert worker.show("vllama.service", "ActiveState") == "inactive"
    assert worker.show("vllama.service", "UnitFileState") == "disabled"
    log = worker.sh(f"journalctl -u {unit} --no-pager -o cat").stdout
    assert "headless multiproc executor" in log, log[-3000:]
    assert "--node-rank 1" in log and "--headless" in log
    # The head's façade fronts exactly the head's engine.
    ready = httpx.get(f"{cluster.facade(HEAD)}/health/ready", timeout=10).json()
    assert [e["url"] for e in ready["engines"]] == [f"http://127.0.0.1:{ENGINE_PORT}"]


def test_a_second_run_changes_nothing(cluster: Fleet) -> None:
    again = run_playbook(cluster.bin_dir, cluster.inventory, timeout=1800)
    print(f"second deploy of the cluster: {again.seconds:.0f}s")
    assert again.rc == 0, again.output[-6000:]
    recap = _recap(again.output)
    assert recap and all(c == 0 and f == 0 for c, f in recap.values()), (
        recap,
        again.changed_tasks(),
    )


def test_a_lost_worker_and_the_cluster_forms_again(cluster: Fleet) -> None:
    head, worker = cluster.hosts[HEAD], cluster.hosts[WORKER]
    unit = f"vllama-engine@{ENGINE}.service"
    head_pid = head.show(unit, "MainPID")
    worker.sh(f"systemctl kill -s KILL {unit}")
    killed = time.monotonic()
    failures, answered = 0, None
    while time.monotonic() - killed < 900:
        try:
            answer = _chat(cluster.facade(HEAD), timeout=STEP_TIMEOUT_S * 3)
        except (AssertionError, httpx.HTTPError):
            failures += 1
            time.sleep(5)
            continue
        answered = answer
        break
    took = time.monotonic() - killed
    print(f"worker killed: answered again after {took:.0f}s ({failures} requests failed meanwhile)")
    assert answered is not None and answered["message"]["content"], "the cluster did not form again"
    # The head noticed (its step failed), exited and was restarted: a new process.
    assert head.show(unit, "MainPID") not in ("0", head_pid)
    assert worker.show(unit, "ActiveState") == "active"
    # What an upgrade's handler does, and a boot (vllama.target wants the façade): the
    # worker's façade stays down, its start condition unmet (systemd/vllama-no-facade.conf).
    worker.sh("systemctl restart vllama.target")
    assert worker.show("vllama.service", "ActiveState") == "inactive"
    assert worker.show("vllama.service", "ConditionResult") == "no"
