"""A rolling upgrade of a fleet under continuous load drops nothing (issue 14, item 3).

Two GPU hosts (VLLAMA_FLEET_HOSTS) stood in by systemd containers (tests/ops/systemd_host.py),
each with one CPU engine declared through `vllama_plan`, deployed by the real `deploy.yml`;
the gateway is the real Caddy with proxy/caddy/Caddyfile as shipped, in front of every
façade, checking
`/health/ready` as role vllama_proxy sets it. `vllama bench` streams through the gateway
without pause while `deploy.yml` rolls two changes over the hosts one at a time (serial 1),
each restart drained by the run: a changed setting (the façade restarts) and a changed
engine flag (the engine restarts, vLLM's own --shutdown-timeout). Measured: requests
answered and failed during each rollout; the target is zero failed.

    VLLAMA_FLEET=1 .venv/bin/python -m pytest tests/fleet -s      (make fleet-check)
    VLLAMA_FLEET=1 VLLAMA_FLEET_HOSTS=3 .venv/bin/python -m pytest tests/fleet -s
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fleet.hosts import Fleet, address, fleet_hosts
from tests.hub import DEMO_REPO, Hub
from tests.ops.proxy_helpers import Proxy, TestCA, make_test_ca, run_proxy
from tests.ops.systemd_host import Host, PlaybookRun, run_playbook
from tests.ops.test_ansible import DEFAULT_MAX_TOKENS
from tests.procs import wait_for
from vllama.config import DEFAULT_PORT

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(5400)]

# Two hosts by default; VLLAMA_FLEET_HOSTS=3 for the three (one CPU engine each).
HOSTS = tuple(f"gpu-{c}" for c in "abcdefgh"[: int(os.environ.get("VLLAMA_FLEET_HOSTS", "2"))])
# Each bench run is short, so a failure is seen by the rollout it happened in.
BENCH_CHUNK_S = 15
ENGINE_ARGS = [
    "--max-model-len", "512", "--dtype", "bfloat16", "--disable-log-stats", "--seed", "0",
    "--enforce-eager", "--override-generation-config",
    json.dumps({"max_new_tokens": DEFAULT_MAX_TOKENS}),
]  # fmt: skip


def _plan(hosts: dict[str, Host]) -> dict[str, Any]:
    return {
        # --enforce-eager: no torch.compile, so no C++ compiler needed.
        "vllama_host_compiler_packages": [],
        "vllama_plan": {
            "gpus": 0,
            "engines": [
                {
                    "name": "demo",
                    "model": DEMO_REPO,
                    "served_name": "vllama-demo",
                    "args": ENGINE_ARGS,
                    # Two engines on two cores: a small KV cache each, and no CPU binding
                    # (vLLM's "auto" binds both engines to the same cores).
                    "env": {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"},
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def fleet(hub: Hub) -> Iterator[Fleet]:
    with fleet_hosts(hub, "fleet", HOSTS, _plan, monitoring=HOSTS[0]) as fleet:
        first = run_playbook(fleet.bin_dir, fleet.inventory, "-e", "vllama_serial=2", timeout=3600)
        print(f"first deploy of {len(fleet.hosts)} hosts: {first.seconds:.0f}s")
        assert first.rc == 0, first.output[-6000:]
        yield fleet


@pytest.fixture(scope="module")
def gateway(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    ca: TestCA = make_test_ca(tmp_path_factory.mktemp("fleet-ca"))
    upstream = " ".join(f"127.0.0.1:{h.ports[DEFAULT_PORT]}" for h in fleet.hosts.values())
    overrides = {
        "VLLAMA_PROXY_HEALTH_URI": "/health/ready",  # as role vllama_proxy sets it
        "VLLAMA_PROXY_RATE_LIMIT": "1000r/s",  # one test client, many requests
        "VLLAMA_PROXY_RATE_BURST": "1000",
    }
    state = tmp_path_factory.mktemp("fleet-gateway")
    with run_proxy("caddy", ca, upstream, state, overrides) as proxy:
        proxy.env["SSL_CERT_FILE"] = str(ca.ca_cert)
        yield proxy


@dataclass
class Load:
    """`vllama bench` through the gateway, run after run, until stopped."""

    proxy: Proxy
    log: Path
    runs: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def loop(self) -> None:
        env = {**os.environ, "SSL_CERT_FILE": self.proxy.env["SSL_CERT_FILE"]}
        cmd = [
            sys.executable, "-m", "vllama.cli.main", "bench", self.proxy.https_url,
            "--model", "vllama-demo", "--api", "ollama", "--stream", "--concurrency", "2",
            "--duration", str(BENCH_CHUNK_S), "--max-tokens", "16", "--timeout", "120", "--json",
        ]  # fmt: skip
        while not self.stop.is_set():
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            with self.log.open("a") as f:
                f.write(res.stdout + res.stderr)
            try:
                self.runs.append(json.loads(res.stdout)["levels"][0])
            except (ValueError, KeyError, IndexError):
                self.runs.append({"requests": 0, "ok": 0, "errors": 1, "error_kinds": {
                    f"bench exit {res.returncode}": 1}})  # fmt: skip

    def totals(self) -> tuple[int, int, dict[str, int]]:
        kinds: dict[str, int] = {}
        for r in self.runs:
            for k, n in r.get("error_kinds", {}).items():
                kinds[k] = kinds.get(k, 0) + n
        return sum(r["ok"] for r in self.runs), sum(r["errors"] for r in self.runs), kinds


@contextlib.contextmanager
def load(proxy: Proxy, log: Path) -> Iterator[Load]:
    running = Load(proxy, log)
    thread = threading.Thread(target=running.loop)
    thread.start()
    try:
        yield running
    finally:
        running.stop.set()
        thread.join(timeout=900)


def _pids(fleet: Fleet, unit: str) -> dict[str, str]:
    return {n: h.show(unit, "MainPID") for n, h in fleet.hosts.items()}


def _roll(fleet: Fleet, proxy: Proxy, name: str, extra: dict[str, Any], unit: str) -> None:
    before = _pids(fleet, unit)
    with load(proxy, fleet.workdir / f"bench-{name}.log") as running:
        time.sleep(BENCH_CHUNK_S)  # load flowing before the rollout begins
        run: PlaybookRun = run_playbook(
            fleet.bin_dir, fleet.inventory, "-e", json.dumps(extra), timeout=3600
        )
        time.sleep(BENCH_CHUNK_S)  # and after it ends
    ok, failed, kinds = running.totals()
    print(
        f"rolling {name}: deploy {run.seconds:.0f}s, {ok} requests answered, {failed} failed "
        f"{kinds or ''} over {len(running.runs)} bench runs"
    )
    assert run.rc == 0, run.output[-6000:]
    after = _pids(fleet, unit)
    assert all(after[n] not in ("0", before[n]) for n in before), (before, after)
    assert ok > 0 and failed == 0, kinds


def test_prometheus_discovers_every_host_from_the_inventory(fleet: Fleet) -> None:
    """Monitored end to end: the monitoring host's Prometheus scrapes each host's façade,
    engine and node-exporter at its inventory address, all up; no DCGM target on a fleet of
    CPU-build hosts (nothing there serves GPU metrics)."""
    want = {"vllama": len(HOSTS), "vllm": len(HOSTS), "node": len(HOSTS), "prometheus": 1,
            "alertmanager": 1}  # fmt: skip

    def counts() -> dict[str, int] | None:
        targets = fleet.prometheus("targets?state=active")["activeTargets"]
        if any(t["health"] != "up" for t in targets):
            return None
        jobs: dict[str, int] = {}
        for t in targets:
            jobs[t["labels"]["job"]] = jobs.get(t["labels"]["job"], 0) + 1
        return jobs

    try:
        jobs = wait_for(counts, "every Prometheus target up", 180, interval=2, errors=(OSError,))
    except TimeoutError:
        targets = fleet.prometheus("targets?state=active")["activeTargets"]
        down = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
        raise AssertionError(f"not every target up: {down}") from None
    assert jobs == want, jobs
    addresses = {t["labels"]["instance"].rsplit(":", 1)[0] for t in
                 fleet.prometheus("targets?state=active")["activeTargets"]
                 if t["labels"]["job"] == "vllama"}  # fmt: skip
    assert addresses == {address(h) for h in fleet.hosts.values()}


def test_rolling_a_facade_setting_over_the_fleet_drops_nothing(
    fleet: Fleet, gateway: Proxy
) -> None:
    _roll(
        fleet,
        gateway,
        "facade-setting",
        {"vllama_settings": {"drain_delay_s": 1}},
        "vllama.service",
    )


def test_rolling_an_engine_flag_over_the_fleet_drops_nothing(fleet: Fleet, gateway: Proxy) -> None:
    host_vars = yaml.safe_load(fleet.inventory.read_text())["all"]["children"]["gpu_hosts"]
    plan = next(iter(host_vars["hosts"].values()))["vllama_plan"]
    plan["engines"][0]["args"] = [*ENGINE_ARGS, "--max-num-seqs", "8"]
    _roll(
        fleet,
        gateway,
        "engine-flag",
        {"vllama_settings": {"drain_delay_s": 1}, "vllama_plan": plan},
        "vllama-engine@demo.service",
    )
