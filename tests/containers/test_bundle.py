"""ops/offline-bundle.sh: create a bundle, remove the image, load the bundle, find the image,
the compose tree and the model again; a damaged bundle is refused. A tiny image keeps this
cheap: the code path is the same for a 20 GB CUDA image."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.containers.build import REPO, run

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]
BUNDLE = REPO / "ops" / "offline-bundle.sh"


@pytest.fixture
def tiny_image() -> Iterator[str]:
    """A one-file image made with `docker import` (no registry, no build)."""
    run(["scripts/ensure-docker.sh"], timeout=600)
    ref = f"vllama-test/bundle-probe:{os.getpid()}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"vllama offline bundle probe\n"
        info = tarfile.TarInfo("probe.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    subprocess.run(["docker", "import", "-", ref], input=buf.getvalue(), check=True, timeout=60,
                   capture_output=True)  # fmt: skip
    yield ref
    subprocess.run(["docker", "rmi", "-f", ref], capture_output=True, check=False, timeout=60)


def bundle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BUNDLE), *args], capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip


def test_bundle_round_trip(tiny_image: str, tmp_path: Path) -> None:
    client = docker.from_env()
    image_id = client.images.get(tiny_image).id
    model = tmp_path / "tiny-model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}\n')
    out = tmp_path / "bundle.tar"

    made = bundle("create", "--out", str(out), "--image", tiny_image, "--model", str(model))
    assert made.returncode == 0, made.stderr
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    for name in ("images.tar", "SHA256SUMS", "compose/compose.yaml", "compose/.env.example",
                 "compose/nginx.yaml", "models/tiny-model/config.json"):  # fmt: skip
        assert f"vllama-bundle/{name}" in names, name
    assert any(n.startswith("vllama-bundle/monitoring/prometheus/") for n in names)
    assert any(n.startswith("vllama-bundle/proxy/") for n in names)

    client.images.remove(tiny_image, force=True)
    dest = tmp_path / "site"
    loaded = bundle("load", str(out), "--dest", str(dest))
    assert loaded.returncode == 0, loaded.stderr
    assert client.images.get(tiny_image).id == image_id
    assert (dest / "models" / "tiny-model" / "config.json").is_file()
    env = (dest / "compose" / ".env").read_text()
    assert "HF_HUB_OFFLINE=1" in env.splitlines()
    # The unpacked tree is a working compose project: config resolves offline.
    cfg = subprocess.run(
        ["docker", "compose", "--env-file", str(dest / "compose" / ".env"), "-f",
         str(dest / "compose" / "compose.yaml"), "--profile", "cpu", "config", "-q"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "GRAFANA_ADMIN_PASSWORD": "x"},
    )  # fmt: skip
    assert cfg.returncode == 0, cfg.stderr


def test_damaged_bundle_is_refused(tiny_image: str, tmp_path: Path) -> None:
    out = tmp_path / "bundle.tar"
    assert bundle("create", "--out", str(out), "--image", tiny_image).returncode == 0
    # Rewrite one file's bytes inside the tar: the checksum list no longer matches.
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(out) as src, tarfile.open(damaged, "w") as dst:
        for member in src.getmembers():
            f = src.extractfile(member) if member.isfile() else None
            if member.name.endswith("compose/compose.yaml") and f is not None:
                data = f.read() + b"\n# tampered\n"
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
            else:
                dst.addfile(member, f)
    loaded = bundle("load", str(damaged), "--dest", str(tmp_path / "site"))
    assert loaded.returncode != 0
    assert "checksum mismatch" in loaded.stderr
