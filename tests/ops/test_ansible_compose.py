"""deploy.yml in compose mode, for real: a Debian 13 (trixie) host running systemd as PID 1
and its own Docker engine gets Docker and compose v2 by Debian's package names, a merged
daemon.json, the images as `docker save` archives (the offline bundle's path), the compose
project with the proxy and monitoring configs it mounts, a complete .env, and the CPU
profile up and healthy. Then an Ollama chat with the real client through the stack's own
proxy, one through the gateway's proxy (native Caddy on the same host, which finds the
façade where compose published it), and a second run that changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ollama
import pytest

from tests.containers.build import Images, build_all, image_id
from tests.ops.conftest import REPO, run
from tests.ops.systemd_host import (
    Host,
    PlaybookRun,
    ops_venv,
    run_playbook,
    systemd_host,
    write_inventory,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ARCHIVES = REPO / ".cache" / "containers" / "archives"
PROJECT_DIR = "/opt/vllama/compose"
# The stack's own proxy inside the host (the gateway's native Caddy holds 443 there).
STACK_HTTPS = 8443
HOST_PORTS = (22, 443, STACK_HTTPS)
OPERATOR_DAEMON_JSON = {"log-level": "info", "features": {"buildkit": True}}
VLLAMA_DAEMON_OPTIONS = {"log-opts": {"max-size": "50m", "max-file": "3"}}


def stack_archive(images: Images) -> Path:
    """The three images the CPU profile runs, as one `docker save` archive, cached by their
    ids (a rebuilt image makes a new archive; the old one is dropped)."""
    refs = [images.facade, images.vllm_cpu, images.standins["caddy"]]
    ids = "".join(image_id(r) or "" for r in refs)
    key = subprocess.run(
        ["sha256sum"], input=ids, capture_output=True, text=True, check=True
    ).stdout[:12]
    archive = ARCHIVES / f"cpu-stack-{key}.tar"
    if not archive.exists():
        ARCHIVES.mkdir(parents=True, exist_ok=True)
        for old in ARCHIVES.glob("cpu-stack-*.tar"):
            old.unlink()
        tmp = archive.with_suffix(".tmp")
        res = run(["docker", "save", "-o", str(tmp), *refs], timeout=900)
        assert res.returncode == 0, res.stderr
        tmp.rename(archive)
    return archive


@dataclass
class ComposeDeployment:
    host: Host
    inventory: Path
    bin_dir: Path
    first: PlaybookRun
    workdir: Path

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.host.sh(f"cd {PROJECT_DIR} && docker compose {' '.join(args)}", timeout)

    def client(self, port: int, ca: Path) -> ollama.Client:
        return ollama.Client(
            host=f"https://localhost:{port}",
            verify=ssl.create_default_context(cafile=ca),
            timeout=120,
        )

    def stack_ca(self) -> Path:
        """Caddy's internal CA of the stack's proxy, out of its volume in the nested engine."""
        ca = self.workdir / "stack-root.crt"
        if not ca.exists():
            res = self.compose(
                "exec -T proxy cat /data/caddy/pki/authorities/local/root.crt", timeout=60
            )
            assert res.returncode == 0 and "BEGIN CERTIFICATE" in res.stdout, res.stderr
            ca.write_text(res.stdout)
        return ca

    def gateway_ca(self) -> Path:
        return self.host.caddy_root_ca(self.workdir / "gateway-root.crt")


@pytest.fixture(scope="module")
def compose_deployed() -> Iterator[ComposeDeployment]:
    bin_dir = ops_venv()
    images = build_all()
    archive = stack_archive(images)
    workdir = REPO / ".cache" / "ops-test" / f"ansible-compose-{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    try:
        with systemd_host(
            workdir,
            {archive.parent: "/srv/images"},
            suite="trixie",
            nested_docker=True,
            ports=HOST_PORTS,
        ) as host:
            # An operator's Docker settings, there before vllama: they must survive.
            seeded = json.dumps(OPERATOR_DAEMON_JSON)
            assert (
                host.sh(
                    f"mkdir -p /etc/docker && echo '{seeded}' > /etc/docker/daemon.json"
                ).returncode
                == 0
            )
            inventory = write_inventory(
                host,
                workdir / "inventory.yml",
                {
                    "vllama_mode": "compose",
                    "vllama_address": "127.0.0.1",
                    "vllama_host_gpu_check": False,
                    "vllama_host_compiler_packages": [],
                    "vllama_compose_nvidia_toolkit": False,
                    "vllama_compose_profiles": ["cpu"],
                    "vllama_compose_image_archives": [f"/srv/images/{archive.name}"],
                    "vllama_compose_image_archives_on_host": True,
                    "vllama_compose_docker_daemon_options": VLLAMA_DAEMON_OPTIONS,
                    "vllama_compose_env": {
                        "VLLAMA_IMAGE": images.facade,
                        "VLLAMA_VLLM_CPU_IMAGE": images.vllm_cpu,
                        "CADDY_IMAGE": images.standins["caddy"],
                        # Inside the test host: its own port 443 is the gateway's Caddy.
                        "VLLAMA_HTTPS_PORT": STACK_HTTPS,
                        "VLLAMA_HTTP_PORT": 8080,
                        # The host container is itself published on 127.0.0.1 only.
                        "VLLAMA_BIND": "0.0.0.0",
                        # Two CPU engines loading at once on a shared 2-core machine.
                        "VLLAMA_CPU_ENGINE_START_PERIOD": "900s",
                    },
                },
                groups=("gpu_hosts", "gateway"),
            )
            # Loading 5 GB of images and two engines' first start, on a shared machine.
            first = run_playbook(bin_dir, inventory, timeout=2700)
            print(f"\nfirst deploy.yml run (compose mode): {first.seconds:.0f}s")
            if first.rc != 0 or first.failed:
                ps = host.sh(
                    f"cd {PROJECT_DIR} && docker compose ps -a && docker compose logs --tail 30"
                )
                raise AssertionError(f"{first.output[-6000:]}\n--- the stack:\n{ps.stdout[-6000:]}")
            yield ComposeDeployment(host, inventory, bin_dir, first, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.timeout(300)
def test_compose_v2_comes_from_debians_own_packages(compose_deployed: ComposeDeployment) -> None:
    host = compose_deployed.host
    res = host.sh("docker compose version --short && dpkg-query -W -f='${Version}' docker-compose")
    assert res.returncode == 0, res.stderr
    version, package = res.stdout.split("\n", 1)[0], res.stdout.split("\n", 1)[1]
    assert version.startswith("2."), version
    assert package.startswith(version.split("-")[0]), (version, package)


@pytest.mark.timeout(300)
def test_daemon_json_is_merged_not_replaced(compose_deployed: ComposeDeployment) -> None:
    res = compose_deployed.host.sh("cat /etc/docker/daemon.json")
    daemon = json.loads(res.stdout)
    for key, value in {**OPERATOR_DAEMON_JSON, **VLLAMA_DAEMON_OPTIONS}.items():
        assert daemon.get(key) == value, (key, daemon)
    # ... and the engine runs with it.
    opts = compose_deployed.host.sh("docker info --format '{{json .LoggingDriver}}'").stdout
    assert "json-file" in opts


@pytest.mark.timeout(300)
def test_the_stack_ships_what_it_mounts_and_a_complete_env(
    compose_deployed: ComposeDeployment,
) -> None:
    host = compose_deployed.host
    for path in (
        "compose/compose.yaml",
        "proxy/caddy/Caddyfile",
        "monitoring/prometheus/prometheus.yml",
    ):
        assert host.sh(f"test -f /opt/vllama/{path}").returncode == 0, path
    env = host.sh(f"cat {PROJECT_DIR}/.env").stdout
    assert "COMPOSE_PROFILES=cpu" in env.splitlines()
    assert "VLLAMA_FACADE_BIND=127.0.0.1" in env.splitlines()
    # The operator's own `docker compose ps` in that directory sees the same project.
    ps = compose_deployed.compose("ps --all --format json")
    assert ps.returncode == 0, ps.stderr
    rows = [json.loads(line) for line in ps.stdout.splitlines() if line.strip()]
    state = {r["Service"]: (r["State"], r.get("Health", ""), r.get("ExitCode")) for r in rows}
    for service in ("vllm-cpu", "vllm-embed", "vllama-cpu", "proxy"):
        assert state[service][:2] == ("running", "healthy"), state
    assert state["pull-cpu"][0] == "exited" and state["pull-cpu"][2] == 0, state


@pytest.mark.timeout(600)
def test_ollama_chat_through_the_stacks_proxy(compose_deployed: ComposeDeployment) -> None:
    with compose_deployed.client(
        compose_deployed.host.ports[STACK_HTTPS], compose_deployed.stack_ca()
    ) as client:
        reply = client.chat(
            model="vllama-demo",
            messages=[{"role": "user", "content": "hello"}],
            options={"num_predict": 8, "temperature": 0},
        )
        names = {m.model for m in client.list().models}
    assert reply.done and reply.message.role == "assistant"
    assert reply.eval_count and 0 < reply.eval_count <= 8
    assert {"vllama-demo:latest", "all-minilm:latest"} <= names, names


@pytest.mark.timeout(600)
def test_the_gateway_finds_the_published_facade(compose_deployed: ComposeDeployment) -> None:
    """The gateway's proxy (vllama_proxy, native) sends to vllama_address:vllama_port: the
    port compose published the façade on."""
    with compose_deployed.client(
        compose_deployed.host.ports[443], compose_deployed.gateway_ca()
    ) as client:
        reply = client.chat(
            model="vllama-demo",
            messages=[{"role": "user", "content": "hi"}],
            options={"num_predict": 4, "temperature": 0},
        )
    assert reply.done and reply.eval_count


@pytest.mark.timeout(1200)
def test_second_run_changes_nothing(compose_deployed: ComposeDeployment) -> None:
    started = time.monotonic()
    second = run_playbook(compose_deployed.bin_dir, compose_deployed.inventory)
    print(f"\nsecond deploy.yml run (compose mode): {time.monotonic() - started:.0f}s")
    assert second.rc == 0 and second.failed == 0, second.output[-6000:]
    assert second.changed == 0, f"changed={second.changed}: {second.changed_tasks()}"
