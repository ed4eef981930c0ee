"""Build every image the container tests need, the air-gapped way: a Debian base from
debootstrap, a wheelhouse from the host's pip, stand-ins for the monitoring and proxy
images from Debian's packages. Nothing is pulled.

Each image is tagged with a content hash of what goes into it (Dockerfile, sources, base
image id, wheelhouse) and carries it as the label `vllama.content-hash`: a rerun on the same
machine finds the tag and skips the build. The cache is never required: a fresh machine
builds everything.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "containers"
LOGS = REPO / ".cache" / "logs"
STANDINS = ("prometheus", "alertmanager", "node-exporter", "caddy")
TIMINGS: dict[str, float] = {}  # step -> seconds, for the report at the end of the run


def run(cmd: list[str], *, timeout: float, log: str | None = None) -> str:
    """Run a command from the repo root; on failure raise with its output's tail."""
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    if log is not None:
        LOGS.mkdir(parents=True, exist_ok=True)
        (LOGS / log).write_text(proc.stdout + proc.stderr)
        TIMINGS[log.removesuffix(".log")] = time.monotonic() - start
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    return proc.stdout


def image_id(ref: str) -> str | None:
    proc = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", ref],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def tree_hash(*parts: str | Path) -> str:
    """sha256 over strings and files (directories: every file, sorted), 12 hex digits."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for f in files:
                if "__pycache__" in f.parts or f.suffix == ".pyc":
                    continue
                h.update(str(f.relative_to(REPO)).encode())
                h.update(f.read_bytes())
        else:
            h.update(part.encode())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class Images:
    base: str
    wheelhouse: str
    facade: str
    vllm_cpu: str
    vllm_cuda_swapped: str  # images/Dockerfile's vllm target built on a local Python base
    standins: dict[str, str]

    def env(self) -> dict[str, str]:
        """The compose variables that point the stack at these images."""
        return {
            "VLLAMA_IMAGE": self.facade,
            "VLLAMA_VLLM_CPU_IMAGE": self.vllm_cpu,
            "VLLAMA_VLLM_IMAGE": self.vllm_cuda_swapped,
            "PROMETHEUS_IMAGE": self.standins["prometheus"],
            "ALERTMANAGER_IMAGE": self.standins["alertmanager"],
            "NODE_EXPORTER_IMAGE": self.standins["node-exporter"],
            "CADDY_IMAGE": self.standins["caddy"],
        }


def _wheelhouse_image() -> str:
    out = run(["ops/build-wheelhouse.sh"], timeout=1800, log="build-wheelhouse.log")
    wheelhouse = Path(out.strip().splitlines()[-1])
    deps = wheelhouse.parent / (wheelhouse / ".deps").read_text().strip()
    ref = f"vllama-local/wheelhouse:{deps.name.removeprefix('deps-')}"
    if image_id(ref) is None:
        run(
            [
                "docker",
                "build",
                "-q",
                "-t",
                ref,
                "-f",
                "images/helpers/wheelhouse/Dockerfile",
                str(deps),
            ],
            timeout=900,
            log="build-wheelhouse-image.log",
        )
    return ref


def build_all() -> Images:
    """Every image, built when its content hash has no tag yet (one parallel compose build)."""
    run(["scripts/ensure-docker.sh"], timeout=600, log="ensure-docker.log")
    base = run(["ops/local-base-image.sh"], timeout=900, log="local-base-image.log").strip()
    wheelhouse = _wheelhouse_image()
    base_id, wh_id = image_id(base), image_id(wheelhouse)
    assert base_id and wh_id
    src = (REPO / "pyproject.toml", REPO / "README.md", REPO / "app")
    shipped = (REPO / "images" / "Dockerfile", REPO / "images" / "build")
    standins_dir = REPO / "images" / "helpers" / "standins"

    def tag(name: str, *parts: str | Path) -> str:
        return f"vllama-test/{name}:{tree_hash(name, *parts)}"

    py_base = tag("python-base", *shipped, base_id)
    facade = tag("facade", *shipped, *src, base_id, wh_id)
    vllm_cpu = tag("vllm-cpu", *shipped, *src, base_id, wh_id)
    cuda = tag("vllm-cuda-swapped", *shipped, *src, base_id, wh_id)
    standins = {n: tag(f"local-{n}", standins_dir, base_id) for n in STANDINS}

    common = {"BASE_IMAGE": base, "WHEELHOUSE_IMAGE": wheelhouse}

    def shipped_target(target: str, args: dict[str, str]) -> dict[str, object]:
        return {"dockerfile": "images/Dockerfile", "target": target, "args": args}

    specs: dict[str, tuple[str, dict[str, object]]] = {
        "python-base": (py_base, shipped_target("runtime-base", common)),
        "facade": (facade, shipped_target("facade", common)),
        "vllm-cpu": (vllm_cpu, shipped_target("vllm-cpu", common)),
        **{
            f"local-{n}": (
                ref,
                {
                    "context": str(standins_dir),
                    "target": n,
                    "args": {"BASE_IMAGE": base},
                },
            )
            for n, ref in standins.items()
        },
    }
    _compose_build(specs)
    # The CUDA Dockerfile needs the Python base above as its stand-in for vLLM's image.
    _compose_build(
        {
            "vllm-cuda-swapped": (
                cuda,
                shipped_target(
                    "vllm",
                    {"VLLM_IMAGE": py_base, "BASE_IMAGE": base, "WHEELHOUSE_IMAGE": wheelhouse},
                ),
            )
        }
    )
    built = Images(base, wheelhouse, facade, vllm_cpu, cuda, standins)
    _drop_stale_tags([py_base, facade, vllm_cpu, cuda, *standins.values()])
    return built


def _drop_stale_tags(current: list[str]) -> None:
    """Older content-hash tags of the same images: the cache keeps one version of each."""
    for ref in current:
        repo = ref.rsplit(":", 1)[0]
        listed = subprocess.run(
            ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repo],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        ).stdout.split()
        stale = [r for r in listed if r != ref]
        if stale:  # an image a container still uses stays; that is fine
            subprocess.run(["docker", "rmi", *stale], capture_output=True, check=False, timeout=120)


def _compose_build(specs: dict[str, tuple[str, dict[str, object]]]) -> None:
    missing = {name: spec for name, spec in specs.items() if image_id(spec[0]) is None}
    if not missing:
        return
    services = {}
    for name, (ref, build) in missing.items():
        build = {
            "context": str(REPO),
            **build,
            "labels": {"vllama.content-hash": ref.split(":")[-1]},
        }
        services[name] = {"image": ref, "build": build}
    CACHE.mkdir(parents=True, exist_ok=True)
    spec_file = CACHE / f"build-{os.getpid()}-{'-'.join(sorted(missing))[:60]}.yaml"
    spec_file.write_text(yaml.safe_dump({"services": services}))
    try:
        run(
            ["docker", "compose", "-p", "vllama-build", "-f", str(spec_file), "build"],
            timeout=2400,
            log=f"build-{'+'.join(sorted(missing))[:80]}.log",
        )
    finally:
        spec_file.unlink(missing_ok=True)
