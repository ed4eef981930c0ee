"""Every PromQL expression in every dashboard and rule, run against a real Prometheus.

Prometheus (the shipped prometheus.yml and rules, 1 s scrape and evaluation) scrapes the
real façade, a real vLLM engine after test traffic, the real node-exporter, the real Caddy
of proxy/caddy, a real Alertmanager, itself, and the recorded output of a real
dcgm-exporter served over HTTP
(tests/ops/fixtures/dcgm-exporter-recorded-*.prom). Every panel must return a finite value;
every rule expression must evaluate; no alert expression may match the healthy stack.
Alertmanager's inhibition (engine down silences its symptoms) runs on the real binary too.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.engines import Engine
from tests.ops.conftest import FIXTURES, MONITORING, binary, run_daemon
from tests.ops.proxy_helpers import make_test_ca, run_proxy
from tests.procs import free_port, wait_for

DCGM_RECORDINGS = {
    "rtx4000ada": FIXTURES / "dcgm-exporter-recorded-rtx4000ada.prom",
    "violations": FIXTURES / "dcgm-exporter-recorded-violations.prom",
}
# Expressions whose result depends on the machine the test runs on, not on our stack.
MACHINE_DEPENDENT_ALERTS = {"VllamaModelCacheDiskFilling"}


# --- the parts Prometheus scrapes ------------------------------------------------------


class _Recorded(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        name = self.path.strip("/").split("/")[0]
        path = DCGM_RECORDINGS.get(name)
        if path is None:
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def dcgm_recordings() -> Iterator[str]:
    """host:port serving each recorded exposition at /<name>/metrics."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorded)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def node_exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    cmd = [
        binary("prometheus-node-exporter"),
        f"--web.listen-address=127.0.0.1:{port}",
        "--collector.disable-defaults",
        "--collector.filesystem",
        "--collector.loadavg",
        "--collector.meminfo",
    ]
    log = tmp_path_factory.mktemp("node") / "node-exporter.log"
    with run_daemon(cmd, f"http://127.0.0.1:{port}/metrics", log):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Alertmanager with the shipped routing and inhibition."""
    port = free_port()
    data = tmp_path_factory.mktemp("alertmanager")
    cmd = [
        binary("prometheus-alertmanager"),
        f"--config.file={MONITORING / 'alertmanager' / 'alertmanager.yml'}",
        f"--storage.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with run_daemon(cmd, f"http://127.0.0.1:{port}/-/ready", data / "alertmanager.log"):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def caddy_metrics(tmp_path_factory: pytest.TempPathFactory, facade_url: str) -> Iterator[str]:
    """host:port of the metrics listener of the real Caddy (proxy/caddy) before the façade."""
    state = tmp_path_factory.mktemp("caddy")
    ca = make_test_ca(state / "ca")
    with run_proxy("caddy", ca, facade_url, state / "caddy") as proxy:
        yield urllib.parse.urlsplit(proxy.metrics_url).netloc


# --- Prometheus -------------------------------------------------------------------------


@dataclass
class Prom:
    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def values(self, expr: str) -> list[float]:
        return [float(s["value"][1]) for s in self.query(expr)]

    def label_values(self, label: str, match: str) -> list[str]:
        params = urllib.parse.urlencode({"match[]": match})
        url = f"{self.url}/api/v1/label/{label}/values?{params}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        values: list[str] = body["data"]
        return values


def write_config(root: Path, targets: dict[str, list[dict[str, Any]]], alertmanager: str) -> Path:
    """The shipped prometheus.yml and rules, with a 1 s rhythm and local target files."""
    shutil.copytree(MONITORING / "prometheus" / "rules", root / "rules")
    config = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
    (root / "targets").mkdir()
    for job, groups in {**targets, "alertmanager": [{"targets": [alertmanager]}]}.items():
        (root / "targets" / f"{job}.yml").write_text(yaml.safe_dump(groups))
    path = root / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory,
    facade_url: str,
    stats_chat_engine: Engine,
    node_exporter: str,
    dcgm_recordings: str,
    alertmanager: str,
    caddy_metrics: str,
) -> Iterator[Prom]:
    root = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    targets = {
        "prometheus": [{"targets": [f"127.0.0.1:{port}"]}],
        "vllama": [{"targets": [facade_url.removeprefix("http://")]}],
        "vllm": [{"targets": [stats_chat_engine.url.removeprefix("http://")]}],
        "node": [{"targets": [node_exporter]}],
        "dcgm": [
            # One server for both recordings; `instance` names the host each came from.
            {
                "targets": [dcgm_recordings],
                "labels": {"__metrics_path__": f"/{name}/metrics", "instance": f"{name}:9400"},
            }
            for name in DCGM_RECORDINGS
        ],
        "proxy": [{"targets": [caddy_metrics], "labels": {"proxy": "caddy"}}],
    }
    config = write_config(root, targets, alertmanager)
    cmd = [
        binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
    ]
    with run_daemon(cmd, f"http://127.0.0.1:{port}/-/ready", root / "prometheus.log"):
        prom = Prom(f"http://127.0.0.1:{port}")
        expected = 1 + 1 + 1 + 1 + len(DCGM_RECORDINGS) + 1 + 1
        wait_for(
            lambda: prom.values("count(up == 1)") == [expected],
            f"all {expected} targets up ({prom.query('up == 0')})",
            timeout=60,
        )
        yield prom


def scraped_after(prom: Prom, job: str, t: float) -> bool:
    return any(v > t for v in prom.values(f'timestamp(up{{job="{job}"}})'))


def send_traffic(facade: str, direct: Engine | None) -> None:
    """Ollama and OpenAI requests through the façade, streamed and not, plus embeddings;
    and completions straight to `direct`, a stats engine the façade does not front."""
    with httpx.Client(base_url=facade, timeout=60) as client:
        calls = [
            ("/api/generate", {"model": "demo", "prompt": "hello", "stream": False,
                               "options": {"num_predict": 8}}),
            ("/api/chat", {"model": "vllama-demo", "stream": True, "options": {"num_predict": 8},
                           "messages": [{"role": "user", "content": "hi"}]}),
            ("/v1/chat/completions", {"model": "vllama-demo", "max_tokens": 8, "stream": True,
                                      "messages": [{"role": "user", "content": "hi"}]}),
            ("/api/embed", {"model": "all-minilm", "input": "a cat sits on the mat"}),
        ]  # fmt: skip
        for path, body in calls:
            response = client.post(path, json=body)
            assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    if direct is not None:
        prompt = {"model": direct.model, "prompt": "hello", "max_tokens": 8}
        for _ in range(2):
            assert httpx.post(f"{direct.url}/v1/completions", json=prompt, timeout=60).is_success


@pytest.fixture(scope="module")
def scraped_traffic(
    prometheus: Prom, facade_url: str, chat_engine: Engine, stats_chat_engine: Engine
) -> Prom:
    """Traffic in two rounds, so the façade's new series are seen at 0 rate first."""
    direct = None if stats_chat_engine.url == chat_engine.url else stats_chat_engine
    send_traffic(facade_url, direct)
    t = time.time()
    wait_for(
        lambda: scraped_after(prometheus, "vllama", t) and scraped_after(prometheus, "vllm", t),
        "a scrape after the first round",
        timeout=30,
    )
    for _ in range(3):
        send_traffic(facade_url, direct)
    positive = (
        "sum(api_route_model_status:vllama_requests:rate5m)",
        "sum(model:vllama_completion_tokens:rate5m)",
        "sum(instance_model_name:vllm_request_success:rate5m)",
        "sum(instance_model_name:vllm_generation_tokens:rate5m)",
    )

    def all_positive() -> bool:
        return all(any(v > 0 for v in prometheus.values(e)) for e in positive)

    try:
        wait_for(all_positive, "recorded rates > 0", timeout=40)
    except TimeoutError as exc:
        got = {e: prometheus.values(e) for e in positive}
        raise AssertionError(f"after traffic, expected every rate > 0, got {got}") from exc
    return prometheus


# --- expressions ------------------------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        p.stem: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
    }


def substitute(expr: str) -> str:
    """Grafana's variables as "All" (regex .*) and its rate interval as 1 minute."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
    return re.sub(r"\$\{?[a-z_]+\}?", ".*", expr)


def rule_exprs() -> list[tuple[str, str]]:
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for path in sorted((MONITORING / "prometheus" / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def finite(prom: Prom, expr: str) -> list[float]:
    return [v for v in prom.values(expr) if math.isfinite(v)]


@pytest.mark.engine
@pytest.mark.timeout(900)
@pytest.mark.parametrize("board", ["overview", "engine", "facade", "gpu"])
def test_every_panel_returns_data(scraped_traffic: Prom, board: str) -> None:
    empty = []
    for panel in dashboards()[board]["panels"]:
        exprs = [substitute(t["expr"]) for t in panel["targets"]]
        results = [finite(scraped_traffic, e) for e in exprs]  # each must also evaluate
        if not any(results):
            empty.append(f"{panel['title']}: {exprs}")
    assert not empty, f"{board}: panels without data:\n" + "\n".join(empty)


@pytest.mark.engine
@pytest.mark.timeout(900)
@pytest.mark.parametrize("board", ["overview", "engine", "facade", "gpu"])
def test_every_variable_has_values(scraped_traffic: Prom, board: str) -> None:
    for var in dashboards()[board]["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
        assert match, var["query"]
        values = scraped_traffic.label_values(match.group(2), substitute(match.group(1)))
        assert values, f"{board}: variable {var['name']} has no values"


@pytest.mark.engine
@pytest.mark.timeout(900)
def test_traffic_shows_in_the_core_panels(scraped_traffic: Prom) -> None:
    """Not just data: rates and latencies a working stack must show after traffic."""
    prom = scraped_traffic
    assert max(finite(prom, "sum(model:vllama_prompt_tokens:rate5m)")) > 0
    p95 = finite(
        prom,
        "histogram_quantile(0.95, sum by (le) (job_le:vllama_request_duration_seconds_bucket:rate5m))",
    )
    assert p95 and 0 < p95[0] < 60
    ttft = finite(
        prom,
        "histogram_quantile(0.5, sum by (le, instance, model_name) "
        "(instance_model_name_le:vllm_time_to_first_token_seconds_bucket:rate5m))",
    )
    assert ttft and 0 < ttft[0] < 10
    assert finite(prom, "max(job:vllama_request_errors:ratio_rate5m)") == [0.0]
    assert finite(prom, "sum(vllama_engine_up)") and min(finite(prom, "sum(vllama_engine_up)")) >= 1
    gpu_memory = finite(
        prom, 'gpu:dcgm_fb_used:ratio{UUID="GPU-a8394b51-c086-568a-9f1a-c1e1c934c44c"}'
    )
    assert gpu_memory == [pytest.approx(1 / 20016)]
    with urllib.request.urlopen(f"{prom.url}/api/v1/alertmanagers", timeout=10) as resp:
        managers = json.load(resp)
    assert managers["data"]["activeAlertmanagers"], "Prometheus found no Alertmanager"


@pytest.mark.engine
@pytest.mark.timeout(900)
def test_every_rule_evaluates_and_no_alert_fires_on_the_healthy_stack(
    scraped_traffic: Prom,
) -> None:
    alerts = {a for a, _ in rule_exprs() if a[0].isupper()}
    firing = []
    for name, expr in rule_exprs():
        result = scraped_traffic.query(expr)  # raises on a PromQL error
        if name in alerts and result and name not in MACHINE_DEPENDENT_ALERTS:
            firing.append(f"{name}: {result}")
    assert not firing, "alert expressions match the healthy stack:\n" + "\n".join(firing)
    # The GPU alerts saw the recorded exporters: the inputs exist, the alerts stay quiet.
    assert scraped_traffic.values('count(DCGM_FI_DEV_GPU_TEMP{job="dcgm"})') == [2.0]
    assert finite(scraped_traffic, "gpu_reason:dcgm_clock_throttle:ratio_rate5m") == [0.0, 0.0]


# --- Alertmanager -----------------------------------------------------------------------


def post_alerts(am: str, alerts: list[dict[str, str]]) -> None:
    body = json.dumps([{"labels": labels} for labels in alerts]).encode()
    request = urllib.request.Request(
        f"http://{am}/api/v2/alerts", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


def alert_states(am: str) -> dict[tuple[str, str], str]:
    with urllib.request.urlopen(f"http://{am}/api/v2/alerts", timeout=10) as resp:
        alerts = json.load(resp)
    return {
        (a["labels"]["alertname"], a["labels"].get("instance", "")): a["status"]["state"]
        for a in alerts
    }


@pytest.mark.timeout(60)
def test_engine_down_inhibits_its_symptoms(alertmanager: str) -> None:
    post_alerts(
        alertmanager,
        [
            {"alertname": "VllmEngineDown", "severity": "critical", "instance": "vllm-a:8000"},
            {"alertname": "VllmQueueBackingUp", "severity": "warning", "instance": "vllm-a:8000"},
            {"alertname": "VllmTimeToFirstTokenBudgetBurn", "severity": "critical",
             "instance": "vllm-a:8000", "model_name": "m"},
            {"alertname": "VllmQueueBackingUp", "severity": "warning", "instance": "vllm-b:8000"},
        ],
    )  # fmt: skip
    expected = {
        ("VllmEngineDown", "vllm-a:8000"): "active",
        ("VllmQueueBackingUp", "vllm-a:8000"): "suppressed",
        ("VllmTimeToFirstTokenBudgetBurn", "vllm-a:8000"): "suppressed",
        ("VllmQueueBackingUp", "vllm-b:8000"): "active",
    }
    wait_for(
        lambda: alert_states(alertmanager) == expected,
        f"inhibition {expected} (got {alert_states(alertmanager)})",
        timeout=20,
    )
