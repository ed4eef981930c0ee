"""Grafana's admin password, required where Grafana runs and nowhere else, with the real
compose binary and Docker engine. Grafana has no Debian package, so the service runs here
on the local Debian base instead of Grafana's image: what is under test is compose's
secret and the service's own guard in front of Grafana's entrypoint (`/run.sh`, absent in
the stand-in, so a run that gets past the guard ends there)."""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.build import REPO, run

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]
COMPOSE = REPO / "compose" / "compose.yaml"
SECRET = "/run/secrets/grafana_admin_password"


@pytest.fixture(scope="module")
def base_image() -> str:
    run(["scripts/ensure-docker.sh"], timeout=600)
    return run(["ops/local-base-image.sh"], timeout=900).strip().splitlines()[-1]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[str]:
    name = f"vllama-grafana-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(
        ["docker", "compose", "-p", name, "-f", str(COMPOSE), "--profile", "monitoring",
         "down", "--volumes", "--timeout", "1"],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip


def up_grafana(
    project: str, env_file: Path, password_line: str | None, image: str
) -> subprocess.CompletedProcess[str]:
    """`.env.example` as the operator copied it, with Grafana's line as given."""
    lines = [
        line
        for line in (REPO / "compose" / ".env.example").read_text().splitlines()
        if not line.startswith("GRAFANA_ADMIN_PASSWORD=")
    ]
    if password_line is not None:
        lines.append(password_line)
    lines += [
        f"GRAFANA_IMAGE={image}",
        # A subnet of its own, outside Docker's default pools: other stacks hold theirs.
        f"VLLAMA_MONITORING_SUBNET=10.231.{secrets.randbelow(250)}.0/24",
        "VLLAMA_RESTART=no",  # one attempt: `up` returns when the container stops
    ]
    env_file.write_text("\n".join(lines) + "\n")
    return subprocess.run(
        ["docker", "compose", "-p", project, "-f", str(COMPOSE), "--env-file", str(env_file),
         "--profile", "monitoring", "up", "--no-deps", "--no-log-prefix", "grafana"],
        capture_output=True, text=True, timeout=120, check=False,
        env={k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"},
    )  # fmt: skip


def test_unset_password_stops_grafana_naming_the_variable(
    project: str, tmp_path: Path, base_image: str
) -> None:
    res = up_grafana(project, tmp_path / ".env", None, base_image)
    assert res.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in res.stdout + res.stderr, res.stdout + res.stderr


def test_empty_password_stops_grafana_before_it_starts(
    project: str, tmp_path: Path, base_image: str
) -> None:
    res = up_grafana(project, tmp_path / ".env", "GRAFANA_ADMIN_PASSWORD=", base_image)
    out = res.stdout + res.stderr
    assert "grafana: GRAFANA_ADMIN_PASSWORD is empty; set it in compose/.env" in out, out
    assert "run.sh" not in out, out


def test_a_set_password_reaches_grafana_as_a_secret_file(
    project: str, tmp_path: Path, base_image: str
) -> None:
    res = up_grafana(
        project, tmp_path / ".env", "GRAFANA_ADMIN_PASSWORD=s3cret-from-env", base_image
    )
    out = res.stdout + res.stderr
    # Past the guard: the stand-in has no Grafana to exec.
    assert "is empty" not in out and "/run.sh" in out, out
    container = f"{project}-grafana-1"
    copied = subprocess.run(
        ["docker", "cp", f"{container}:{SECRET}", "-"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    assert b"s3cret-from-env" in copied.stdout  # a tar stream holding the one file
    inspect = subprocess.run(
        ["docker", "inspect", "-f", "{{json .Config.Env}}", container],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "s3cret-from-env" not in inspect.stdout, "the password must not be in the environment"
