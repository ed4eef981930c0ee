#!/usr/bin/env python3
"""Write vllama's Grafana dashboards (dashboards/*.json) from the definitions below.

One source for the four dashboards, so every panel gets the same datasource variable,
a unit and a description. Run it after editing; tests/ops/test_dashboards.py fails when
the committed JSON differs from what this prints. Standard library only.

    python3 monitoring/grafana/build_dashboards.py
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39  # Grafana 10.4+


@dataclass
class Target:
    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    description: str
    unit: str
    targets: list[Target]
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    height: int = 8


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel]
    variables: list[dict[str, Any]] = field(default_factory=list)


def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-select label_values variable whose "All" is the regex `.*`."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


DATASOURCE_VARIABLE: dict[str, Any] = {
    "name": "datasource",
    "label": "Prometheus",
    "type": "datasource",
    "query": "prometheus",
    "refresh": 1,
    "current": {},
    "hide": 0,
}


def render_panel(panel_id: int, panel: Panel, x: int, y: int) -> dict[str, Any]:
    targets = [
        {
            "refId": chr(ord("A") + i),
            "datasource": DS,
            "expr": t.expr,
            "legendFormat": t.legend or "__auto",
            "range": True,
        }
        for i, t in enumerate(panel.targets)
    ]
    options: dict[str, Any]
    if panel.kind == "stat":
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        }
    else:
        options = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DS,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": options,
        "targets": targets,
    }


def render(dashboard: Dashboard) -> dict[str, Any]:
    panels = []
    x = y = row_height = 0
    for panel_id, panel in enumerate(dashboard.panels, start=1):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(render_panel(panel_id, panel, x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["vllama"],
        "editable": False,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "",
        "version": 1,
        "templating": {"list": [DATASOURCE_VARIABLE, *dashboard.variables]},
        "annotations": {"list": []},
        "links": [
            {"type": "dashboards", "tags": ["vllama"], "asDropdown": True, "title": "vllama"}
        ],
        "panels": panels,
    }


def quantiles(metric_rate: str, by: str, legend: str) -> list[Target]:
    """p50/p95/p99 of a histogram whose bucket rates are `metric_rate` (an expression)."""
    return [
        Target(f"histogram_quantile({q}, sum by (le{by}) ({metric_rate}))", f"p{p}{legend}")
        for q, p in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))
    ]


# --- Overview -------------------------------------------------------------------------

M = 'model=~"$model"'
OVERVIEW = Dashboard(
    uid="vllama-overview",
    title="vllama / Overview",
    description="Is vllama serving? Traffic, errors, latency, tokens and capacity at a glance.",
    variables=[query_variable("model", "Model", "label_values(vllama_requests_total, model)")],
    panels=[
        Panel(
            "Requests",
            "Requests per second the façade answered, all APIs and statuses.",
            "reqps",
            [Target(f"sum(api_route_model_status:vllama_requests:rate5m{{{M}}})", "requests/s")],
            kind="stat",
            width=6,
            height=5,
        ),
        Panel(
            "Error ratio",
            "Share of façade requests answered with a 5xx status over 5 minutes. "
            "VllamaErrorRatioHigh pages above its threshold.",
            "percentunit",
            [Target("max(job:vllama_request_errors:ratio_rate5m)", "5xx ratio")],
            kind="stat",
            width=6,
            height=5,
        ),
        Panel(
            "Engines up",
            "Engines the façade's health check passes, next to engines Prometheus can scrape.",
            "short",
            [
                Target("sum(vllama_engine_up)", "healthy (façade)"),
                Target('sum(up{job="vllm"})', "scraped (Prometheus)"),
            ],
            kind="stat",
            width=6,
            height=5,
        ),
        Panel(
            "In flight and queued",
            "Requests the façade is working on, requests waiting in its own queue, and "
            "requests waiting inside the engines.",
            "short",
            [
                Target("sum(vllama_requests_in_flight)", "in flight (façade)"),
                Target("sum(vllama_requests_queued)", "queued (façade)"),
                Target("sum(vllm:num_requests_waiting)", "waiting (engines)"),
            ],
            kind="stat",
            width=6,
            height=5,
        ),
        Panel(
            "Request rate by model",
            "Requests per second per model and API.",
            "reqps",
            [
                Target(
                    f"sum by (model, api) (api_route_model_status:vllama_requests:rate5m{{{M}}})",
                    "{{model}} {{api}}",
                )
            ],
        ),
        Panel(
            "Error ratio over time",
            "Share of requests answered with a 5xx status, per façade job.",
            "percentunit",
            [Target("job:vllama_request_errors:ratio_rate5m", "{{job}}")],
        ),
        Panel(
            "Request latency",
            "End-to-end request duration at the façade (whole response, streams included): "
            "p50, p95 and p99 over 5 minutes.",
            "s",
            quantiles("job_le:vllama_request_duration_seconds_bucket:rate5m", "", ""),
        ),
        Panel(
            "Time to first token",
            "Time from the request until the first token leaves the façade: p50, p95, p99.",
            "s",
            quantiles("job_le:vllama_time_to_first_token_seconds_bucket:rate5m", "", ""),
        ),
        Panel(
            "Tokens per second",
            "Prompt tokens in and completion tokens out, summed over the selected models.",
            "suffix: tok/s",
            [
                Target(f"sum(model:vllama_prompt_tokens:rate5m{{{M}}})", "prompt (in)"),
                Target(f"sum(model:vllama_completion_tokens:rate5m{{{M}}})", "completion (out)"),
            ],
        ),
        Panel(
            "Concurrency",
            "In-flight and queued requests at the façade and in the engines over time.",
            "short",
            [
                Target("sum(vllama_requests_in_flight)", "in flight (façade)"),
                Target("sum(vllama_requests_queued)", "queued (façade)"),
                Target("sum(vllm:num_requests_running)", "running (engines)"),
                Target("sum(vllm:num_requests_waiting)", "waiting (engines)"),
            ],
        ),
    ],
)

# --- Engine ---------------------------------------------------------------------------

E = 'instance=~"$instance", model_name=~"$model_name"'
BY = ", instance, model_name"
ENGINE = Dashboard(
    uid="vllama-engine",
    title="vllama / Engine",
    description="vLLM engines (V1 metrics): scheduler, KV cache, latency and request shape.",
    variables=[
        query_variable("instance", "Engine", "label_values(vllm:num_requests_running, instance)"),
        query_variable(
            "model_name",
            "Model",
            'label_values(vllm:num_requests_running{instance=~"$instance"}, model_name)',
        ),
    ],
    panels=[
        Panel(
            "Running and waiting requests",
            "Requests in the engine's running batch and requests waiting for a slot. A "
            "steady queue means the engine is saturated (VllmQueueBackingUp).",
            "short",
            [
                Target(
                    f"sum by (instance, model_name) (vllm:num_requests_running{{{E}}})",
                    "running {{instance}} {{model_name}}",
                ),
                Target(
                    f"sum by (instance, model_name) (vllm:num_requests_waiting{{{E}}})",
                    "waiting {{instance}} {{model_name}}",
                ),
            ],
        ),
        Panel(
            "KV cache usage",
            "Share of the KV cache blocks in use (1 = full). Near full, requests queue and "
            "running ones are preempted (VllmKvCacheNearFull).",
            "percentunit",
            [
                Target(
                    f"max by (instance, model_name) (vllm:kv_cache_usage_perc{{{E}}})",
                    "{{instance}} {{model_name}}",
                )
            ],
        ),
        Panel(
            "Preemptions",
            "Requests preempted per second to free KV cache; they are recomputed later.",
            "ops",
            [
                Target(
                    f"instance_model_name:vllm_num_preemptions:rate5m{{{E}}}",
                    "{{instance}} {{model_name}}",
                )
            ],
        ),
        Panel(
            "Prefix cache hit ratio",
            "Share of prompt tokens found in the prefix cache over 5 minutes.",
            "percentunit",
            [
                Target(
                    f"instance_model_name:vllm_prefix_cache_hit:ratio_rate5m{{{E}}}",
                    "{{instance}} {{model_name}}",
                )
            ],
        ),
        Panel(
            "Time to first token",
            "Engine-side time to first token: p50, p95, p99 per engine and model.",
            "s",
            quantiles(
                f"instance_model_name_le:vllm_time_to_first_token_seconds_bucket:rate5m{{{E}}}",
                BY,
                " {{instance}} {{model_name}}",
            ),
        ),
        Panel(
            "Inter-token latency",
            "Time between two output tokens of a request: p50, p95, p99.",
            "s",
            quantiles(
                f"instance_model_name_le:vllm_inter_token_latency_seconds_bucket:rate5m{{{E}}}",
                BY,
                " {{instance}} {{model_name}}",
            ),
        ),
        Panel(
            "End-to-end request latency",
            "Engine-side request duration from arrival to the last token: p50, p95, p99.",
            "s",
            quantiles(
                f"instance_model_name_le:vllm_e2e_request_latency_seconds_bucket:rate5m{{{E}}}",
                BY,
                " {{instance}} {{model_name}}",
            ),
        ),
        Panel(
            "Queue time",
            "Time requests waited in the engine's queue before scheduling: p50, p95, p99.",
            "s",
            quantiles(
                f"rate(vllm:request_queue_time_seconds_bucket{{{E}}}[$__rate_interval])",
                BY,
                " {{instance}} {{model_name}}",
            ),
        ),
        Panel(
            "Prompt and generation length",
            "Mean prompt and generated tokens per finished request.",
            "short",
            [
                Target(
                    f"sum by (instance, model_name) (rate(vllm:request_prompt_tokens_sum{{{E}}}"
                    "[$__rate_interval])) / sum by (instance, model_name) "
                    f"(rate(vllm:request_prompt_tokens_count{{{E}}}[$__rate_interval]))",
                    "prompt {{instance}} {{model_name}}",
                ),
                Target(
                    "sum by (instance, model_name) (rate(vllm:request_generation_tokens_sum"
                    f"{{{E}}}[$__rate_interval])) / sum by (instance, model_name) "
                    f"(rate(vllm:request_generation_tokens_count{{{E}}}[$__rate_interval]))",
                    "generation {{instance}} {{model_name}}",
                ),
            ],
        ),
        Panel(
            "Token throughput",
            "Prompt tokens processed and tokens generated per second.",
            "suffix: tok/s",
            [
                Target(
                    f"instance_model_name:vllm_prompt_tokens:rate5m{{{E}}}",
                    "prompt {{instance}} {{model_name}}",
                ),
                Target(
                    f"instance_model_name:vllm_generation_tokens:rate5m{{{E}}}",
                    "generation {{instance}} {{model_name}}",
                ),
            ],
        ),
        Panel(
            "Finished requests by reason",
            "Requests finished per second by reason (stop, length, abort, error).",
            "reqps",
            [
                Target(
                    "sum by (finished_reason) (rate(vllm:request_success_total"
                    f"{{{E}}}[$__rate_interval]))",
                    "{{finished_reason}}",
                )
            ],
        ),
    ],
)

# --- GPU ------------------------------------------------------------------------------

G = 'instance=~"$instance", gpu=~"$gpu"'
L = "{{instance}} GPU {{gpu}}"
GPU = Dashboard(
    uid="vllama-gpu",
    title="vllama / GPU",
    description="Per GPU from NVIDIA dcgm-exporter (started with monitoring/dcgm/counters.csv).",
    variables=[
        query_variable("instance", "Host", "label_values(DCGM_FI_DEV_GPU_TEMP, instance)"),
        query_variable(
            "gpu", "GPU", 'label_values(DCGM_FI_DEV_GPU_TEMP{instance=~"$instance"}, gpu)'
        ),
    ],
    panels=[
        Panel(
            "GPU utilisation",
            "Share of time a kernel ran on the GPU (DCGM_FI_DEV_GPU_UTIL).",
            "percent",
            [Target(f"DCGM_FI_DEV_GPU_UTIL{{{G}}}", L)],
        ),
        Panel(
            "Memory used",
            "Framebuffer used / (used + free). vLLM reserves most of it up front "
            "(gpu_memory_utilization), so a high flat line is normal (GpuMemoryNearFull).",
            "percentunit",
            [Target(f"gpu:dcgm_fb_used:ratio{{{G}}}", L)],
        ),
        Panel(
            "Memory used (MiB)",
            "Framebuffer memory used and free.",
            "mbytes",
            [
                Target(f"DCGM_FI_DEV_FB_USED{{{G}}}", f"used {L}"),
                Target(f"DCGM_FI_DEV_FB_FREE{{{G}}}", f"free {L}"),
            ],
        ),
        Panel(
            "Temperature",
            "GPU and memory temperature (GpuTemperatureHigh).",
            "celsius",
            [
                Target(f"DCGM_FI_DEV_GPU_TEMP{{{G}}}", f"GPU {L}"),
                Target(f"DCGM_FI_DEV_MEMORY_TEMP{{{G}}}", f"memory {L}"),
            ],
        ),
        Panel(
            "Power",
            "Power draw and the power management limit (GpuPowerNearLimit).",
            "watt",
            [
                Target(f"DCGM_FI_DEV_POWER_USAGE{{{G}}}", f"draw {L}"),
                Target(f"DCGM_FI_DEV_POWER_MGMT_LIMIT{{{G}}}", f"limit {L}"),
            ],
        ),
        Panel(
            "Clocks",
            "SM and memory clocks. A falling SM clock under load is throttling.",
            "rotmhz",
            [
                Target(f"DCGM_FI_DEV_SM_CLOCK{{{G}}}", f"SM {L}"),
                Target(f"DCGM_FI_DEV_MEM_CLOCK{{{G}}}", f"memory {L}"),
            ],
        ),
        Panel(
            "Throttling",
            "Share of time the clocks were held down, by reason (power, thermal), from the "
            "violation counters (GpuThrottled).",
            "percentunit",
            [Target(f"gpu_reason:dcgm_clock_throttle:ratio_rate5m{{{G}}}", f"{{{{reason}}}} {L}")],
        ),
        Panel(
            "XID errors",
            "XIDs per code in the exporter's window (DCGM_EXP_XID_ERRORS_COUNT), and the "
            "code of the last XID the driver reported (0 = none) (GpuXidErrors).",
            "short",
            [
                Target(
                    "max by (instance, gpu, xid) (max_over_time(DCGM_EXP_XID_ERRORS_COUNT"
                    f'{{{G}, xid!="0"}}[$__rate_interval]))',
                    f"XID {{{{xid}}}} {L}",
                ),
                Target(f"DCGM_FI_DEV_XID_ERRORS{{{G}}}", f"last XID code {L}"),
            ],
        ),
        Panel(
            "ECC errors and remapped rows",
            "Uncorrectable (double-bit) and corrected ECC errors and remapped memory rows in "
            "the last hour (GpuEccErrors).",
            "short",
            [
                Target(f"increase(DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{G}}}[1h])", f"double-bit {L}"),
                Target(f"increase(DCGM_FI_DEV_ECC_SBE_VOL_TOTAL{{{G}}}[1h])", f"single-bit {L}"),
                Target(
                    f"increase(DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{{{G}}}[1h])",
                    f"uncorrectable rows remapped {L}",
                ),
                Target(f"DCGM_FI_DEV_ROW_REMAP_FAILURE{{{G}}}", f"row remap failed {L}"),
            ],
        ),
        Panel(
            "PCIe replays",
            "PCIe retries per second; a steady rate points at a bad slot or riser.",
            "ops",
            [Target(f"rate(DCGM_FI_DEV_PCIE_REPLAY_COUNTER{{{G}}}[$__rate_interval])", L)],
        ),
    ],
)

# --- Façade ---------------------------------------------------------------------------

F = 'api=~"$api", route=~"$route", model=~"$model"'
FACADE = Dashboard(
    uid="vllama-facade",
    title="vllama / Façade",
    description="The façade itself: per route and model, its own added latency, upstream "
    "errors, API keys, the queue and engine health as the façade sees it.",
    variables=[
        query_variable("api", "API", "label_values(vllama_requests_total, api)"),
        query_variable("route", "Route", 'label_values(vllama_requests_total{api=~"$api"}, route)'),
        query_variable("model", "Model", "label_values(vllama_requests_total, model)"),
    ],
    panels=[
        Panel(
            "Requests by route and model",
            "Requests per second per API route and model.",
            "reqps",
            [
                Target(
                    "sum by (api, route, model) (rate(vllama_requests_total"
                    f"{{{F}}}[$__rate_interval]))",
                    "{{route}} {{model}}",
                )
            ],
        ),
        Panel(
            "Responses by status",
            "Responses per second by HTTP status.",
            "reqps",
            [
                Target(
                    f"sum by (status) (rate(vllama_requests_total{{{F}}}[$__rate_interval]))",
                    "{{status}}",
                )
            ],
        ),
        Panel(
            "Request latency p95 by route",
            "95th percentile of the whole request duration per route and model.",
            "s",
            [
                Target(
                    "histogram_quantile(0.95, sum by (le, route, model) (rate("
                    f"vllama_request_duration_seconds_bucket{{{F}}}[$__rate_interval])))",
                    "{{route}} {{model}}",
                )
            ],
        ),
        Panel(
            "Added latency (façade overhead)",
            "Time the façade itself spent per request, upstream waits excluded: p50, p95, "
            "p99 per route. This is what vllama costs over talking to vLLM directly.",
            "s",
            quantiles(
                'rate(vllama_overhead_seconds_bucket{api=~"$api", route=~"$route"}'
                "[$__rate_interval])",
                ", route",
                " {{route}}",
            ),
        ),
        Panel(
            "Time to first token p95 by model",
            "95th percentile of the time until the first token left the façade.",
            "s",
            [
                Target(
                    "histogram_quantile(0.95, sum by (le, model) (rate("
                    f"vllama_time_to_first_token_seconds_bucket{{{F}}}[$__rate_interval])))",
                    "{{model}}",
                )
            ],
        ),
        Panel(
            "Inter-chunk gap p95 by model",
            "95th percentile of the gap between two streamed chunks.",
            "s",
            [
                Target(
                    "histogram_quantile(0.95, sum by (le, model) (rate("
                    f"vllama_inter_chunk_seconds_bucket{{{F}}}[$__rate_interval])))",
                    "{{model}}",
                )
            ],
        ),
        Panel(
            "Upstream errors",
            "Errors talking to engines per second, by engine and kind (connect, timeout, "
            "http_4xx, http_5xx, protocol, cancelled); 0 when there were none.",
            "ops",
            [
                Target(
                    "sum by (engine, kind) (rate(vllama_upstream_errors_total"
                    "[$__rate_interval])) or on() vector(0)",
                    "{{engine}} {{kind}}",
                )
            ],
        ),
        Panel(
            "Requests by API key",
            "Requests per second per API key name (never the key itself).",
            "reqps",
            [
                Target(
                    f"sum by (key) (rate(vllama_requests_total{{{F}}}[$__rate_interval]))",
                    "{{key}}",
                )
            ],
        ),
        Panel(
            "Authentication failures",
            "Requests rejected for a missing or wrong API key per second; 0 when none.",
            "ops",
            [
                Target(
                    "sum by (api) (rate(vllama_auth_failures_total[$__rate_interval])) "
                    "or on() vector(0)",
                    "{{api}}",
                )
            ],
        ),
        Panel(
            "Queue",
            "Requests waiting in the façade's bounded queue, and requests it rejected "
            "because the queue was full (per second).",
            "short",
            [
                Target("sum(vllama_requests_queued)", "queued"),
                Target(
                    "sum(rate(vllama_queue_rejections_total[$__rate_interval])) or on() vector(0)",
                    "rejected/s",
                ),
            ],
        ),
        Panel(
            "Engine health",
            "Per engine: 1 when the façade's last health check passed, and the circuit "
            "breaker state (0 closed, 1 half-open, 2 open).",
            "short",
            [
                Target("vllama_engine_up", "up {{engine}}"),
                Target("vllama_engine_breaker_state", "breaker {{engine}}"),
            ],
        ),
        Panel(
            "Engine restarts",
            "Restarts of engines the façade supervises, in the last hour; 0 when none.",
            "short",
            [
                Target(
                    "sum by (engine) (increase(vllama_engine_restarts_total[1h])) "
                    "or on() vector(0)",
                    "{{engine}}",
                )
            ],
        ),
    ],
)

DASHBOARDS = {"overview": OVERVIEW, "engine": ENGINE, "gpu": GPU, "facade": FACADE}


def rendered() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {
        f"{name}.json": json.dumps(render(d), indent=2, ensure_ascii=False) + "\n"
        for name, d in DASHBOARDS.items()
    }


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, text in rendered().items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
