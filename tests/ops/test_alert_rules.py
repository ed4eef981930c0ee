"""Alert and recording rules: promtool checks, promtool unit tests, conventions, coverage.

Every alert tier (name + severity) must have a promtool test that expects it firing at some
time T with exact labels and annotations and expects nothing one evaluation earlier, so a
new alert without a test fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.conftest import MONITORING, binary, run

PROMETHEUS = MONITORING / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.test.yml"))
RUNBOOK = MONITORING / "runbook.md"
RUNBOOK_URL = "https://github.com/vllama/vllama/blob/main/monitoring/runbook.md#"

ALERT_NAME = re.compile(r"^(Vllama|Vllm|Gpu)[A-Z][A-Za-z0-9]+$")
RECORD_NAME = re.compile(r"^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$")
SEVERITIES = {"critical", "warning", "info"}

pytestmark = pytest.mark.timeout(120)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for f in RULE_FILES for g in load(f)["groups"] for rule in g["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def duration_s(text: str) -> int:
    """Prometheus duration ('90s', '5m', '1h') in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", text))


def test_rule_files_exist() -> None:
    assert {f.name for f in RULE_FILES} >= {
        "vllama-thresholds.yml",
        "vllama-recording.yml",
        "vllama-alerts.yml",
        "vllm-alerts.yml",
        "gpu-alerts.yml",
    }
    assert TEST_FILES, "no promtool test files in monitoring/prometheus/tests"


def test_promtool_check_rules() -> None:
    result = run([binary("promtool"), "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run([binary("promtool"), "test", "rules", *map(str, TEST_FILES)], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The harness is not vacuous: a wrong expected label makes promtool fail."""
    original = (PROMETHEUS / "tests" / "vllm-alerts.test.yml").read_text(encoding="utf-8")
    broken = original.replace("severity: critical, job: vllm", "severity: warning, job: vllm", 1)
    broken = broken.replace("../rules/", f"{PROMETHEUS / 'rules'}/")
    assert broken != original
    path = tmp_path / "broken.test.yml"
    path.write_text(broken, encoding="utf-8")
    result = run([binary("promtool"), "test", "rules", str(path)])
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
    assert "VllmEngineDown" in result.stdout + result.stderr


def test_recording_rules_are_named_level_metric_operation() -> None:
    records = [r["record"] for r in rules() if "record" in r]
    assert len(records) >= 20
    bad = [r for r in records if not RECORD_NAME.match(r)]
    assert not bad, f"recording rules not named level:metric:operation: {bad}"
    assert len(records) == len(set(records)), "a recording rule is defined twice"


def test_alerts_follow_the_conventions() -> None:
    runbook = RUNBOOK.read_text(encoding="utf-8")
    anchors = {m.lower() for m in re.findall(r"^## (\S+)\s*$", runbook, re.M)}
    problems = []
    for a in alerts():
        name = a["alert"]
        ann = a.get("annotations", {})
        if not ALERT_NAME.match(name):
            problems.append(f"{name}: not CamelCase with a Vllama/Vllm/Gpu prefix")
        if duration_s(str(a.get("for", ""))) <= 0:
            problems.append(f"{name}: no `for`")
        if a.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity must be one of {sorted(SEVERITIES)}")
        if not str(ann.get("summary", "")).endswith("."):
            problems.append(f"{name}: summary missing or not a sentence")
        if "{{" not in str(ann.get("description", "")):
            problems.append(f"{name}: description is not templated")
        if ann.get("runbook_url") != RUNBOOK_URL + name.lower():
            problems.append(f"{name}: runbook_url must be {RUNBOOK_URL}{name.lower()}")
        if name.lower() not in anchors:
            problems.append(f"{name}: no '## {name}' section in monitoring/runbook.md")
    assert not problems, "\n".join(problems)


def test_thresholds_live_in_one_place() -> None:
    """An alert comparing with a constant threshold prints it from the threshold series."""
    for a in alerts():
        expr = a["expr"]
        description = a["annotations"]["description"]
        for series in re.findall(r"threshold:[a-z0-9_:]+", expr):
            if "objective" in series:  # printed as the SLO objective, checked below
                continue
            assert f'query "{series}"' in description, f"{a['alert']}: prints no {series}"
    text = "\n".join(a["annotations"]["description"] for a in alerts())
    assert 'query "threshold:vllm_time_to_first_token_slo:objective"' in text


def test_issue_alert_list_is_covered() -> None:
    names = {a["alert"] for a in alerts()}
    assert names >= {
        "VllmEngineDown",
        "VllmEngineNotReady",
        "VllamaDown",
        "VllamaErrorRatioHigh",
        "VllmTimeToFirstTokenBudgetBurn",
        "VllmQueueBackingUp",
        "VllmKvCacheNearFull",
        "VllmPreemptionsRising",
        "VllmEngineRestarting",
        "GpuXidErrors",
        "GpuMemoryNearFull",
        "GpuTemperatureHigh",
        "GpuPowerNearLimit",
        "GpuEccErrors",
        "GpuThrottled",
        "VllamaModelCacheDiskFilling",
        "VllamaScrapeTargetDown",
        "VllamaScrapeJobMissing",
    }
    xid = [a for a in alerts() if a["alert"] == "GpuXidErrors"]
    assert all("DCGM_EXP_XID_ERRORS_COUNT" in a["expr"] for a in xid), "XID: use the count"
    memory = next(a for a in alerts() if a["alert"] == "GpuMemoryNearFull")
    recorded = {r["record"]: r["expr"] for r in rules() if "record" in r}
    assert "FB_USED + DCGM_FI_DEV_FB_FREE" in recorded[memory["expr"].split()[0]]
    burn = [a for a in alerts() if a["alert"] == "VllmTimeToFirstTokenBudgetBurn"]
    assert {a["labels"]["severity"] for a in burn} == {"critical", "warning"}
    assert all(re.search(r"\band\b", a["expr"]) for a in burn), "burn rate: two windows per tier"


def test_every_alert_tier_has_a_boundary_test() -> None:
    """For each alert tier: a test expects it firing at T and not firing at T - interval."""
    hold = {(a["alert"], a["labels"]["severity"]): duration_s(a["for"]) for a in alerts()}
    covered: set[tuple[str, str]] = set()
    for path in TEST_FILES:
        doc = load(path)
        interval = duration_s(str(doc.get("evaluation_interval", "1m")))
        for test in doc["tests"]:
            # (alertname, eval time) -> the label sets expected firing then
            expected: dict[tuple[str, int], list[dict[str, str]]] = {}
            for case in test.get("alert_rule_test", []):
                for exp in case["exp_alerts"]:
                    assert exp.get("exp_annotations"), f"{path.name}: annotations not asserted"
                key = (case["alertname"], duration_s(case["eval_time"]))
                expected[key] = [e["exp_labels"] for e in case["exp_alerts"]]
            for (name, t), firing in expected.items():
                before = expected.get((name, t - interval))
                for labels in firing:
                    # An alert cannot fire before its `for` has passed since the first eval.
                    assert t >= hold[(name, labels["severity"])], f"{path.name}: {name} at {t}s"
                    if before is not None and labels not in before:
                        covered.add((name, labels["severity"]))
    tiers = {(a["alert"], a["labels"]["severity"]) for a in alerts()}
    missing = sorted(tiers - covered)
    assert not missing, f"alerts without a for-boundary promtool test: {missing}"
