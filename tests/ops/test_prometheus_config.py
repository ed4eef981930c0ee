"""prometheus.yml, its file-discovery target files, Alertmanager routing and DCGM counters."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.conftest import FIXTURES, MONITORING, binary, run

PROMETHEUS = MONITORING / "prometheus"
ALERTMANAGER = MONITORING / "alertmanager" / "alertmanager.yml"
JOBS = {"prometheus", "vllama", "vllm", "node", "dcgm", "proxy", "alertmanager"}

pytestmark = pytest.mark.timeout(120)


def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    return loaded


def test_promtool_check_config() -> None:
    result = run([binary("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # The rule files are found through the config's glob, relative to the config.
    assert "rules/vllm-alerts.yml" in result.stdout


def test_every_job_uses_file_discovery_with_a_shipped_target_file() -> None:
    """Compose ships these files; Ansible renders the same paths on bare metal."""
    jobs = {job["job_name"]: job for job in config()["scrape_configs"]}
    assert set(jobs) == JOBS
    for name, job in jobs.items():
        assert "static_configs" not in job, f"{name}: static targets break the Ansible path"
        files = [f for sd in job["file_sd_configs"] for f in sd["files"]]
        for rel in files:
            groups = yaml.safe_load((PROMETHEUS / rel).read_text())
            assert isinstance(groups, list) and groups, f"{rel}: empty target file"
            for group in groups:
                assert set(group) <= {"targets", "labels"}, f"{rel}: {group}"
                assert all(":" in t for t in group["targets"]), f"{rel}: host:port expected"
    managers = config()["alerting"]["alertmanagers"][0]["file_sd_configs"][0]["files"]
    assert managers == ["targets/alertmanager.yml"]


def test_config_accepts_bare_metal_targets(tmp_path: Path) -> None:
    """The same file with Ansible-style target files (hosts, labels) is still valid."""
    shutil.copytree(PROMETHEUS, tmp_path / "prometheus")
    targets = tmp_path / "prometheus" / "targets"
    (targets / "vllm.yml").write_text(
        "- targets: ['gpu1.example.internal:8000', 'gpu2.example.internal:8000']\n"
        "  labels: {host: gpu1}\n"
    )
    (targets / "dcgm.yml").write_text("[]\n")  # a CPU-only site
    result = run(
        [binary("promtool"), "check", "config", str(tmp_path / "prometheus" / "prometheus.yml")]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_config_is_valid() -> None:
    result = run([binary("amtool"), "check-config", str(ALERTMANAGER)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 inhibit rules" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=VllmEngineDown"], "pager"),
        (["severity=warning", "alertname=VllmKvCacheNearFull"], "tickets"),
        (["severity=info", "alertname=Whatever"], "blackhole"),
        (["alertname=Unlabelled"], "blackhole"),
    ],
)
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    result = run(
        [binary("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_dcgm_counters_enable_what_the_alerts_need() -> None:
    fields = {}
    for line in (MONITORING / "dcgm" / "counters.csv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, kind, help_text = (part.strip() for part in line.split(",", 2))
            assert kind in {"gauge", "counter", "label"}, line
            assert help_text, line
            fields[name] = kind
    needed = {
        "DCGM_EXP_XID_ERRORS_COUNT",
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "DCGM_FI_DEV_POWER_VIOLATION",
        "DCGM_FI_DEV_THERMAL_VIOLATION",
        "DCGM_FI_DEV_POWER_MGMT_LIMIT",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_GPU_TEMP",
    }
    assert needed <= set(fields), needed - set(fields)
    rules = "".join(p.read_text() for p in (PROMETHEUS / "rules").glob("*.yml"))
    dashboards = "".join(
        p.read_text() for p in (MONITORING / "grafana" / "dashboards").glob("*.json")
    )
    # Every DCGM field the rules and dashboards read is enabled here.
    referenced = set(re.findall(r"\bDCGM_(?:FI|EXP)_[A-Z0-9_]+", rules + dashboards))
    assert len(referenced) >= 15
    assert referenced <= set(fields), referenced - set(fields)


def test_throttle_counters_are_nanoseconds_in_the_help_and_the_rule() -> None:
    """dcgm-exporter's own counters file gives the *_VIOLATION counters in ns
    (NVIDIA/dcgm-exporter#589, etc/default-counters.csv; DCGM's dcgm_fields.h). Ours says
    the same, and the throttled-share rule divides their rate by 1e9, not 1e6 (which would
    read 1000x too much throttling)."""
    counters = (MONITORING / "dcgm" / "counters.csv").read_text()
    violations = re.findall(r"^(DCGM_FI_DEV_\w+_VIOLATION),[^\n]*$", counters, re.M)
    assert len(violations) == 6
    for name in violations:
        line = next(ln for ln in counters.splitlines() if ln.startswith(name + ","))
        assert line.rstrip().endswith("(in ns)."), line
    rules = (PROMETHEUS / "rules" / "vllama-recording.yml").read_text()
    used = re.findall(r"rate\((DCGM_FI_DEV_\w+_VIOLATION)\[5m\]\) / (\S+),", rules)
    assert {name for name, _ in used} == {
        "DCGM_FI_DEV_POWER_VIOLATION",
        "DCGM_FI_DEV_THERMAL_VIOLATION",
    }
    assert {divisor for _, divisor in used} == {"1e9"}


def test_recorded_dcgm_fixtures_parse() -> None:
    """The recorded exporter output is valid exposition text (lint findings aside)."""
    for path in sorted(FIXTURES.glob("dcgm-exporter-recorded-*.prom")):
        text = path.read_text()
        assert text.startswith("# Recorded"), f"{path.name}: header must say where it is from"
        result = run_stdin([binary("promtool"), "check", "metrics"], text)
        # promtool exits 1 on a parse error and 3 on style findings only.
        assert result.returncode in (0, 3), result.stdout + result.stderr
        assert "error while linting" not in result.stderr


def run_stdin(cmd: list[str], text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=30, check=False)
