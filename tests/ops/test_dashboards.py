"""Grafana dashboards and provisioning: structure, datasource variable, units, PromQL hygiene.

The live test (test_prometheus_live.py) runs every expression; this file checks what can be
checked without a Prometheus: the JSON structure Grafana and our tests rely on, and that
the committed JSON is what monitoring/grafana/build_dashboards.py generates.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from tests.ops.conftest import MONITORING, REPO

GRAFANA = MONITORING / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
UIDS = {"vllama-overview", "vllama-engine", "vllama-gpu", "vllama-facade"}
DS_REF = {"type": "prometheus", "uid": "${datasource}"}

DATASOURCE_REF = {
    "type": "object",
    "required": ["type", "uid"],
    "properties": {"type": {"const": "prometheus"}, "uid": {"const": "${datasource}"}},
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "uid": {"type": "string", "pattern": "^vllama-[a-z]+$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {"list": {"type": "array", "minItems": 1}},
        },
        "panels": {
            "type": "array",
            "minItems": 4,
            "items": {
                "type": "object",
                "required": [
                    "id",
                    "type",
                    "title",
                    "description",
                    "datasource",
                    "gridPos",
                    "fieldConfig",
                    "targets",
                ],
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "type": {"enum": ["timeseries", "stat"]},
                    "title": {"type": "string", "minLength": 1},
                    "description": {"type": "string", "minLength": 20},
                    "datasource": DATASOURCE_REF,
                    "gridPos": {
                        "type": "object",
                        "required": ["h", "w", "x", "y"],
                        "properties": {
                            "w": {"type": "integer", "minimum": 1, "maximum": 24},
                            "x": {"type": "integer", "minimum": 0, "maximum": 23},
                        },
                    },
                    "fieldConfig": {
                        "type": "object",
                        "required": ["defaults"],
                        "properties": {
                            "defaults": {
                                "type": "object",
                                "required": ["unit"],
                                "properties": {"unit": {"type": "string", "minLength": 1}},
                            }
                        },
                    },
                    "targets": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["refId", "expr", "datasource"],
                            "properties": {
                                "expr": {"type": "string", "minLength": 3},
                                "datasource": DATASOURCE_REF,
                            },
                        },
                    },
                },
            },
        },
    },
}

# A raw counter series name; recording rules (level:metric:operation) are rates already.
COUNTER = re.compile(r"(?<![\w:])([a-zA-Z_][a-zA-Z0-9_:]*(?:_total|_count|_sum|_bucket))(?![\w:])")
RATE_FUNCS = ("rate(", "irate(", "increase(")


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in DASHBOARD_FILES}


def panel_exprs() -> Iterator[tuple[str, str, str]]:
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel["targets"]:
                yield name, panel["title"], target["expr"]


def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", GRAFANA / "build_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def test_four_dashboards_with_pinned_uids() -> None:
    assert {b["uid"] for b in dashboards().values()} == UIDS


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_matches_schema(path: Path) -> None:
    board = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.validate(board, SCHEMA)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DS_REF, f"{path.name}: variable {var['name']}"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_no_hard_coded_datasource_uid(path: Path) -> None:
    board = json.loads(path.read_text(encoding="utf-8"))
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]["uid"]
    assert provisioned not in path.read_text(encoding="utf-8")
    for key, value in walk(board):
        if key == "datasource" and isinstance(value, dict):
            assert value.get("uid") == "${datasource}", f"{path.name}: {value}"


def test_committed_json_is_what_the_builder_writes() -> None:
    rendered = load_builder().rendered()
    assert set(rendered) == {p.name for p in DASHBOARD_FILES}
    for name, text in rendered.items():
        committed = (GRAFANA / "dashboards" / name).read_text(encoding="utf-8")
        assert committed == text, (
            f"{name} is stale: run python3 monitoring/grafana/build_dashboards.py"
        )


def test_every_counter_goes_through_rate() -> None:
    """Raw cumulative counters on a graph are meaningless; only rates and increases."""
    bad = []
    for name, title, expr in panel_exprs():
        for match in COUNTER.finditer(expr):
            before = expr[: match.start()].rstrip()
            if not before.endswith(RATE_FUNCS):
                bad.append(f"{name} / {title}: {match.group(1)}")
    for path in (MONITORING / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                for match in COUNTER.finditer(rule["expr"]):
                    before = rule["expr"][: match.start()].rstrip()
                    if not before.endswith(RATE_FUNCS):
                        bad.append(f"{path.name}: {match.group(1)}")
    assert not bad, "counters not wrapped in rate()/increase():\n" + "\n".join(bad)


def test_metric_names_exist() -> None:
    """Façade names come from the contract table; recording rules are defined; vLLM uses V1."""
    contract = (REPO / "docs" / "development.md").read_text(encoding="utf-8")
    facade = set(re.findall(r"`(vllama_[a-z_]+)`", contract))
    assert "vllama_requests_total" in facade
    records = {
        rule["record"]
        for path in (MONITORING / "prometheus" / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    texts = [expr for _, _, expr in panel_exprs()]
    texts += [
        rule["expr"]
        for path in (MONITORING / "prometheus" / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]
    for text in texts:
        for metric in re.findall(r"(?<![\w:])vllama_[a-z_]+(?![\w:])", text):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert metric in facade or base in facade, f"{metric} is not in the metrics contract"
        for name in re.findall(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b", text):
            assert name in records, f"{name} is used but not recorded"
        for legacy in ("gpu_cache_usage_perc", "num_requests_swapped", "time_per_output_token"):
            assert f"vllm:{legacy}" not in text, f"V0 metric vllm:{legacy}"


def test_grafana_provisioning() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["access"] == "proxy"
    scrape = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    assert ds["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "vllama.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["folder"] == "vllama"
    assert provider["options"]["path"].endswith("/vllama")
