"""A real systemd host for the Ansible tests: a container running systemd as PID 1 with
sshd, built from images/helpers/systemd-host on a local Debian base (there is no registry).

`systemd_host(workdir, mounts)` starts one with a fresh SSH key and ports published on
127.0.0.1, and removes it afterwards; `suite="trixie"` makes it Debian 13, and
`nested_docker=True` lets a Docker engine run inside it (compose mode). `run_playbook`
runs ansible-playbook from .venv-ops and parses the play recap.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.ops.conftest import REPO, run
from tests.procs import wait_for

IMAGE_DIR = REPO / "images" / "helpers" / "systemd-host"
ANSIBLE_DIR = REPO / "ops" / "ansible"
OPS_VENV = REPO / ".venv-ops"
# Ports the tests reach on the host: SSH, the proxy's HTTPS site, Prometheus.
PORTS = (22, 443, 9090)


def _checked(cmd: list[str], what: str, timeout: float) -> str:
    res = run(cmd, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(
            f"{what} failed (rc {res.returncode}):\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
        )
    return res.stdout.strip()


def ops_venv() -> Path:
    """.venv-ops (ansible-core, collections, ansible-lint), created when missing."""
    _checked([str(REPO / "scripts/setup-ops-venv.sh")], "scripts/setup-ops-venv.sh", 900)
    return OPS_VENV / "bin"


def host_image(suite: str = "bookworm") -> str:
    """The test host image, built once per Dockerfile and base image (a Debian `suite`)."""
    _checked([str(REPO / "scripts/ensure-docker.sh")], "scripts/ensure-docker.sh", 600)
    res = subprocess.run(
        [str(REPO / "ops/local-base-image.sh")],
        env={**os.environ, "VLLAMA_DEBIAN_SUITE": suite},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"ops/local-base-image.sh ({suite}) failed:\n{res.stderr[-3000:]}")
    base = res.stdout.strip().splitlines()[-1]
    digest = hashlib.sha256((IMAGE_DIR / "Dockerfile").read_bytes() + base.encode()).hexdigest()[
        :12
    ]
    tag = f"vllama-test/systemd-host:{digest}"
    if run(["docker", "image", "inspect", tag]).returncode != 0:
        _checked(
            [
                "docker",
                "build",
                "-q",
                "--build-arg",
                f"BASE_IMAGE={base}",
                "-t",
                tag,
                str(IMAGE_DIR),
            ],
            "building images/helpers/systemd-host",
            900,
        )
    return tag


@dataclass
class Host:
    name: str
    ports: dict[int, int]  # container port -> 127.0.0.1 port
    key: Path

    def sh(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside the host, as root."""
        return run(["docker", "exec", self.name, "sh", "-c", script], timeout=timeout)

    def show(self, unit: str, prop: str) -> str:
        return self.sh(f"systemctl show -p {prop} --value {unit}").stdout.strip()

    def caddy_root_ca(self, dest: Path) -> Path:
        """The root certificate of the host's Caddy (vllama_proxy, TLS mode internal), copied
        to `dest` once: clients trust it to reach the proxy over HTTPS."""
        if not dest.exists():
            src = f"{self.name}:/var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt"
            subprocess.run(
                ["docker", "cp", src, str(dest)], check=True, capture_output=True, timeout=60
            )
        return dest


# What a Docker engine inside the host needs (checked on these machines): network and
# mount privileges without --privileged, cgroups writable, and /var/lib/docker on a volume
# (overlay2 does not stack on the container's own overlay root). SYS_PTRACE: runc opens
# /proc/PID/ns/* of a container's process to `docker exec` into it (healthchecks), which
# root may do to another user's process only with it; a real host's root has it.
NESTED_DOCKER_ARGS = [
    "--cap-add", "NET_ADMIN",
    "--cap-add", "SYS_PTRACE",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
]  # fmt: skip


@contextlib.contextmanager
def systemd_host(
    workdir: Path,
    mounts: dict[Path, str],
    *,
    suite: str = "bookworm",
    nested_docker: bool = False,
    ports: tuple[int, ...] = PORTS,
) -> Iterator[Host]:
    image = host_image(suite)
    key = workdir / "id_ed25519"
    key.unlink(missing_ok=True)
    _checked(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], "ssh-keygen", 30)
    name = f"vllama-test-host-{uuid.uuid4().hex[:8]}"
    cmd = ["docker", "run", "-d", "--name", name, "--hostname", "testhost"]
    # systemd as PID 1 without --privileged (which fails here): ../shared/MACHINE-NOTES.md.
    cgroups = "rw" if nested_docker else "ro"
    cmd += ["--cap-add", "SYS_ADMIN", "-v", f"/sys/fs/cgroup:/sys/fs/cgroup:{cgroups}"]
    docker_volume = f"{name}-docker"
    if nested_docker:
        cmd += [*NESTED_DOCKER_ARGS, "-v", f"{docker_volume}:/var/lib/docker"]
    cmd += ["--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp"]
    # vLLM's shared-memory broadcast needs more than Docker's default 64 MiB /dev/shm.
    cmd += ["--shm-size", "1g"]
    cmd += ["-v", f"{key}.pub:/root/.ssh/authorized_keys:ro"]
    for src, dest in mounts.items():
        cmd += ["-v", f"{src}:{dest}:ro"]
    for port in ports:
        cmd += ["-p", f"127.0.0.1::{port}"]
    _checked([*cmd, image], "docker run (systemd host)", 120)
    try:
        published = {}
        for port in ports:
            out = _checked(["docker", "port", name, str(port)], "docker port", 30)
            published[port] = int(out.splitlines()[0].rsplit(":", 1)[1])
        host = Host(name, published, key)
        if nested_docker:
            # /proc/sys is read-only in a container that is not --privileged: Docker 26
            # cannot switch IPv6 off on its containers' interfaces and must be told to
            # carry on (its own error message names this variable). Any docker.service
            # installed later picks the drop-in up.
            dropin = "/etc/systemd/system/docker.service.d/vllama-test-host.conf"
            host.sh(
                f"mkdir -p {dropin.rsplit('/', 1)[0]} && printf '[Service]\\n"
                f"Environment=DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1\\n' > {dropin}"
            )
        try:
            wait_for(
                lambda: host.sh("systemctl is-active ssh.service").stdout.strip() == "active",
                f"sshd in {name} active",
                120,
                interval=0.5,
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: {host.sh('systemctl --failed').stdout}") from None
        yield host
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120, check=False)
        if nested_docker:
            subprocess.run(
                ["docker", "volume", "rm", "-f", docker_volume],
                capture_output=True,
                timeout=300,
                check=False,
            )


def write_inventory(
    host: Host,
    path: Path,
    host_vars: dict[str, object],
    groups: tuple[str, ...] = ("gpu_hosts", "gateway", "monitoring"),
) -> Path:
    """One host in each of `groups` (all by default), reached over SSH on its published port."""
    import yaml

    hostvars = {
        "ansible_host": "127.0.0.1",
        "ansible_port": host.ports[22],
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(host.key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        **host_vars,
    }
    children = {g: {"hosts": {"testhost": None}} for g in groups}
    path.write_text(
        yaml.safe_dump({"all": {"hosts": {"testhost": hostvars}, "children": children}})
    )
    return path


@dataclass
class PlaybookRun:
    rc: int
    output: str
    ok: int
    changed: int
    failed: int
    seconds: float

    def changed_tasks(self) -> list[str]:
        """Names of the tasks that reported a change (for a readable failure)."""
        names, current = [], ""
        for line in self.output.splitlines():
            if line.startswith("TASK ["):
                current = line
            elif line.startswith("changed:"):
                names.append(current)
        return names


def run_playbook(bin_dir: Path, inventory: Path, *args: str, timeout: float = 1500) -> PlaybookRun:
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    started = time.monotonic()
    res = subprocess.run(
        [str(bin_dir / "ansible-playbook"), "-i", str(inventory), "deploy.yml", *args],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = res.stdout + res.stderr
    recap = re.search(
        r"testhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", output
    )
    ok, changed, failed = (int(g) for g in recap.groups()) if recap else (0, -1, -1)
    return PlaybookRun(res.returncode, output, ok, changed, failed, time.monotonic() - started)


def private_wheelhouse(workdir: Path) -> Path:
    """vllama's wheel and the venv's exact closure (CPU torch included), made on this machine
    and hard-linked into a private copy under `workdir` (ops/build-wheelhouse.sh prunes old
    ones); `workdir` must be on the repository's file system (.cache)."""
    res = run([str(REPO / "ops/build-wheelhouse.sh")], timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    built = Path(res.stdout.strip().splitlines()[-1])
    private = workdir / "wheelhouse"
    shutil.copytree(built, private, copy_function=os.link)
    return private
