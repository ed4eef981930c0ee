"""The vllama_host role's GPU checks, run for real by ansible-playbook on this machine
(connection local, check tasks only) against a STAND-IN nvidia-smi that prints what the
real one prints (`--query-gpu=index,name,driver_version,memory.total --format=csv,noheader`):
a driver older than the pinned vLLM's CUDA build needs stops the host with a message that
names the driver found and the one needed; a new enough one passes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ops.systemd_host import ANSIBLE_DIR, ops_venv
from vllama.engine.pins import MIN_DRIVER_MAJOR, VLLM_VERSION

pytestmark = pytest.mark.timeout(300)


def _run_checks(tmp_path: Path, driver: str) -> subprocess.CompletedProcess[str]:
    bin_dir = ops_venv()
    (tmp_path / "version").write_text(f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {driver}\n")
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        f'echo "0, NVIDIA H100 80GB HBM3, {driver}, 81559 MiB"\n'
        f'echo "1, NVIDIA H100 80GB HBM3, {driver}, 81559 MiB"\n'
    )
    smi.chmod(0o755)
    play = [
        {
            "name": "GPU checks",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {
                "vllama_host_driver_proc": str(tmp_path / "version"),
                "vllama_host_nvidia_smi": str(smi),
                "vllama_engine_version": VLLM_VERSION,
            },
            "tasks": [
                {
                    "ansible.builtin.include_role": {
                        "name": "vllama_host",
                        "tasks_from": "gpu_checks.yml",
                    }
                }
            ],
        }
    ]
    playbook = tmp_path / "checks.yml"
    playbook.write_text(yaml.safe_dump(play))
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    return subprocess.run(
        [
            str(bin_dir / "ansible-playbook"),
            "-i",
            "localhost,",
            str(playbook),
            "-e",
            f"ansible_python_interpreter={bin_dir / 'python'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )


def test_an_old_driver_stops_the_host_naming_the_driver_needed(tmp_path: Path) -> None:
    res = _run_checks(tmp_path, "575.57.08")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "NVIDIA driver 575.57.08 is too old" in out
    assert f"needs driver {MIN_DRIVER_MAJOR} or newer" in out and f"vLLM {VLLM_VERSION}" in out


def test_a_new_enough_driver_passes(tmp_path: Path) -> None:
    res = _run_checks(tmp_path, "580.95.05")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "driver 580.95.05 runs the CUDA" in res.stdout
