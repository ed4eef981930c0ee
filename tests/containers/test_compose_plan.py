"""ops/compose-plan.py: the GPUs of one Docker host declared once (VLLAMA_PLAN in compose's
.env, the same declaration as a fleet host's vllama_plan), laid out by vllama's planner into
compose services; `docker compose config` (the real compose binary) resolves the result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.containers.test_static import COMPOSE_DIR, REPO, resolved
from tests.plans import MIXED_8_GPUS

pytestmark = pytest.mark.timeout(300)


def generate(tmp: Path, plan: object) -> subprocess.CompletedProcess[str]:
    env_file = tmp / ".env"
    env_file.write_text(
        (COMPOSE_DIR / ".env.example").read_text() + f"\nVLLAMA_PLAN={json.dumps(plan)}\n"
    )
    return subprocess.run(
        [sys.executable, str(REPO / "ops" / "compose-plan.py"), "--env-file", str(env_file),
         "--out-dir", str(tmp)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_mixed_models_on_eight_gpus_become_one_service_per_engine(tmp_path: Path) -> None:
    res = generate(tmp_path, MIXED_8_GPUS)
    assert res.returncode == 0, res.stderr
    model = resolved(["gpu", "monitoring"], files=("compose.yaml", str(tmp_path / "plan.yaml")))
    services: dict[str, Any] = model["services"]
    engines = sorted(s for s in services if s.startswith("vllm-"))
    assert engines == ["vllm-qwen2-5-32b", "vllm-qwen2-5-7b-0", "vllm-qwen2-5-7b-1",
                       "vllm-qwen2-5-7b-2", "vllm-qwen2-5-7b-3"]  # fmt: skip
    assert "vllm" not in services and "pull" not in services  # the single engine gave way
    big = services["vllm-qwen2-5-32b"]
    devices = big["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [
        {"driver": "nvidia", "device_ids": ["0", "1", "2", "3"], "capabilities": ["gpu"]}
    ]
    assert str(big["shm_size"]) in ("16gb", "17179869184")  # 4 GiB per GPU
    assert json.loads(big["environment"]["VLLAMA_ENGINE_ARGS"]) == [
        "--max-model-len", "16384", "--tensor-parallel-size", "4"
    ]  # fmt: skip
    assert "CUDA_VISIBLE_DEVICES" not in big["environment"]  # the container sees its own only
    # What compose.yaml gives every engine is kept: the one engine command, an init, the
    # grace period for vLLM's own drain, the offline cache, the healthcheck.
    assert big["entrypoint"] == ["vllama", "engine"] and big["init"] is True
    assert big["stop_grace_period"] and big["environment"]["HF_HUB_OFFLINE"] == "1"
    assert "healthcheck" in big
    pulled = big["depends_on"]["pull-qwen-qwen2-5-32b-instruct"]
    assert pulled["condition"] == "service_completed_successfully" and len(big["depends_on"]) == 1
    small = [services[f"vllm-qwen2-5-7b-{i}"] for i in range(4)]
    ids = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in small]
    assert ids == [["4"], ["5"], ["6"], ["7"]]
    # The façade fronts exactly these engines; Prometheus scrapes exactly them.
    facade = services["vllama"]
    urls = facade["environment"]["VLLAMA_ENGINES"].split(",")
    assert urls[0] == "http://vllm-qwen2-5-32b:8001" and len(urls) == 5
    assert set(facade["depends_on"]) == set(engines)
    mounts = [v["target"] for v in services["prometheus"]["volumes"]]
    assert "/etc/prometheus/targets/vllm.yml" in mounts
    targets = yaml.safe_load((tmp_path / "plan-targets.yml").read_text())
    assert [t["targets"][0] for t in targets] == [u.removeprefix("http://") for u in urls]


def test_a_declaration_that_does_not_fit_names_the_problem(tmp_path: Path) -> None:
    res = generate(tmp_path, {"gpus": 4, "engines": [{"model": "m", "tensor_parallel_size": 8}]})
    assert res.returncode == 2 and "needs 8 GPUs" in res.stderr, res.stderr
    assert not (tmp_path / "plan.yaml").exists()
