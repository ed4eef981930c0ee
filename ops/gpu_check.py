"""`make gpu-check`: does vllama work on this GPU host? Run it after installing (under 10
minutes; most of it is the first model download and load):

    make gpu-check                                   # everything, a small model from the hub
    make gpu-check GPU_CHECK_ARGS="--json"           # the same, as JSON
    .venv/bin/python ops/gpu_check.py --model Qwen/Qwen2.5-0.5B-Instruct --dcgm-url URL

Steps, each reported as pass / warn / fail / skip in one table at the end:
  gpu       NVML sees the GPUs (the driver is loaded; "no GPU" otherwise)
  doctor    `vllama doctor` finds no problem
  serve     `vllama serve` starts the façade and one vLLM engine with a small model
  facade    an Ollama chat answered by the façade
  nvml      the façade reports the GPUs (NVML) on /health/ready, and on /metrics if it can
  proxy     the same chat through Caddy with the shipped Caddyfile
  dcgm      the DCGM exporter's counters answer (compose's dcgm-exporter, or --dcgm-url)
The exit status is 0 only when no step failed. Without a GPU the GPU steps fail saying so;
`--engine URL` fronts an engine that is already running (any build) instead of starting
one, which is how CI runs the steps a machine without a GPU can run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CADDYFILE = REPO / "proxy" / "caddy" / "Caddyfile"
DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
NO_GPU = "no GPU"


@dataclass
class Step:
    name: str
    status: str  # pass | warn | fail | skip
    detail: str
    seconds: float = 0.0


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status != "fail" for s in self.steps)

    def add(self, name: str, check: Callable[[], tuple[str, str]]) -> Step:
        start = time.monotonic()
        try:
            status, detail = check()
        except Exception as exc:  # a step's own failure, reported; the others still run
            status, detail = "fail", f"{type(exc).__name__}: {exc}"
        step = Step(name, status, detail, round(time.monotonic() - start, 1))
        self.steps.append(step)
        print(f"gpu-check: {name}: {status} ({detail})", file=sys.stderr, flush=True)
        return step

    def table(self) -> str:
        width = max(len(s.name) for s in self.steps)
        lines = [f"{'step':<{width}}  result  seconds  detail"]
        lines += [
            f"{s.name:<{width}}  {s.status.upper():<6}  {s.seconds:>7.1f}  {s.detail}"
            for s in self.steps
        ]
        passed = sum(s.status == "pass" for s in self.steps)
        failed = sum(s.status == "fail" for s in self.steps)
        lines.append(f"{passed} passed, {failed} failed")
        return "\n".join(lines)


def http(
    url: str, body: dict[str, Any] | None = None, *, timeout: float = 10, ctx: Any = None
) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


def wait_until(what: str, check: Callable[[], bool], timeout: float, proc: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(1)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vllama_command() -> list[str]:
    script = Path(sys.executable).parent / "vllama"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vllama.cli.main"]


# --- the steps ----------------------------------------------------------------------------


def check_gpu() -> tuple[str, str]:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            driver = pynvml.nvmlSystemGetDriverVersion()
            names = [
                str(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)))
                for i in range(count)
            ]
            if count:
                return "pass", f"driver {driver}; {count} GPU(s): {', '.join(names)}"
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            return "fail", f"{NO_GPU}: NVML: {exc}"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "fail", f"{NO_GPU}: no NVIDIA driver (nvidia-smi missing, NVML not loadable)"
    res = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
    if res.returncode != 0 or not res.stdout.strip():
        return "fail", f"{NO_GPU}: nvidia-smi -L: {(res.stdout + res.stderr).strip()[:200]}"
    return "pass", "; ".join(res.stdout.strip().splitlines())


def check_doctor() -> tuple[str, str]:
    res = subprocess.run(
        [*vllama_command(), "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        report = json.loads(res.stdout)
    except json.JSONDecodeError:
        return (
            "fail",
            f"vllama doctor said nothing readable (rc {res.returncode}): {res.stderr[-300:]}",
        )
    bad = [f"{c['name']}: {c['detail']}" for c in report["checks"] if c["status"] == "fail"]
    warns = [c["name"] for c in report["checks"] if c["status"] == "warn"]
    if bad:
        return "fail", "; ".join(bad)
    return ("warn" if warns else "pass"), f"{len(report['checks'])} checks" + (
        f", warnings: {', '.join(warns)}" if warns else ""
    )


@dataclass
class Facade:
    url: str
    model: str


@contextlib.contextmanager
def serve(args: argparse.Namespace, workdir: Path, report: Report) -> Iterator[Facade | None]:
    """`vllama serve` on a free port: supervising one engine on the GPU, or fronting --engine."""
    port = free_port()
    env = {**os.environ, "VLLAMA_HOST": "127.0.0.1", "VLLAMA_PORT": str(port)}
    cmd = [*vllama_command(), "serve"]
    if args.engine:
        env["VLLAMA_ENGINES"] = args.engine
    else:
        cmd += ["--model", args.model]
    log = workdir / "serve.log"
    proc: subprocess.Popen[bytes] | None = None
    facade: Facade | None = None

    def start() -> tuple[str, str]:
        nonlocal proc, facade
        if not args.engine and report.steps[0].status == "fail":
            return (
                "fail",
                f"{NO_GPU}: a model needs a GPU here (--engine URL fronts a running engine)",
            )
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(
                "the façade ready",
                lambda: http(f"{url}/health/ready")[0] == 200,
                args.timeout,
                proc,
            )
        except (RuntimeError, TimeoutError) as exc:
            tail = log.read_text(errors="replace")[-600:]
            return "fail", f"{exc}; log {log}: {tail}"
        _, tags = http(f"{url}/api/tags")
        models = [m["name"] for m in json.loads(tags)["models"]]
        chat = [m for m in models if "minilm" not in m]
        if not chat:
            return "fail", f"the façade lists no chat model: {models}"
        facade = Facade(url, chat[0])
        what = f"fronting {args.engine}" if args.engine else f"serving {args.model}"
        return "pass", f"vllama serve {what} on {url}; models: {', '.join(models)}"

    try:
        report.add("serve", start)
        yield facade
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def chat(url: str, model: str, ctx: Any = None) -> tuple[str, str]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": False,
        "options": {"num_predict": 16, "temperature": 0},
    }
    status, text = http(f"{url}/api/chat", body, timeout=120, ctx=ctx)
    if status != 200:
        return "fail", f"{url}/api/chat answered {status}: {text[:200]}"
    reply = json.loads(text)
    if not reply.get("done") or not reply.get("eval_count"):
        return "fail", f"an answer without tokens: {text[:200]}"
    return (
        "pass",
        f"{reply['eval_count']} tokens from {model}: {reply['message']['content'][:40]!r}",
    )


def check_nvml(facade: Facade) -> tuple[str, str]:
    _, ready = http(f"{facade.url}/health/ready")
    report = json.loads(ready)
    gpus = report.get("gpus") or []
    _, metrics = http(f"{facade.url}/metrics")
    gauges = sorted({line.split("{")[0].split(" ")[0] for line in metrics.splitlines()
                     if line.startswith("vllama_gpu_")})  # fmt: skip
    if not gpus:
        return "fail", f"{NO_GPU}: /health/ready lists no GPU ({report.get('gpu_note')})"
    if not gauges:
        return (
            "warn",
            f"/health/ready lists {len(gpus)} GPU(s); /metrics has no vllama_gpu_* gauges",
        )
    return "pass", f"{len(gpus)} GPU(s) on /health/ready; /metrics: {', '.join(gauges)}"


@contextlib.contextmanager
def caddy(upstream: str, workdir: Path) -> Iterator[tuple[str, ssl.SSLContext]]:
    """The shipped Caddyfile on free loopback ports, TLS from Caddy's internal CA."""
    binary = shutil.which("caddy")
    if binary is None:
        raise RuntimeError("caddy is not installed (apt-get install caddy)")
    https, state = free_port(), workdir / "caddy"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VLLAMA_PROXY_")},
        "HOME": str(state),
        "XDG_DATA_HOME": str(state / "data"),
        "XDG_CONFIG_HOME": str(state / "config"),
        "VLLAMA_PROXY_HOSTNAME": "localhost",
        "VLLAMA_PROXY_BIND": "127.0.0.1",
        "VLLAMA_PROXY_HTTP_PORT": str(free_port()),
        "VLLAMA_PROXY_HTTPS_PORT": str(https),
        "VLLAMA_PROXY_REDIRECT_PORT": f":{https}",
        "VLLAMA_PROXY_METRICS_BIND": "127.0.0.1",
        "VLLAMA_PROXY_METRICS_PORT": str(free_port()),
        "VLLAMA_PROXY_ADMIN": f"127.0.0.1:{free_port()}",
        "VLLAMA_PROXY_TLS_MODE": "internal",
        "VLLAMA_PROXY_UPSTREAM": upstream.removeprefix("http://"),
        "VLLAMA_PROXY_ACCESS_LOG": str(state / "access.log"),
    }
    state.mkdir(parents=True, exist_ok=True)
    log = state / "caddy.log"
    cmd = [binary, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    root = state / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
    try:
        wait_until("Caddy's internal CA", root.exists, 30, proc)
        ctx = ssl.create_default_context(cafile=str(root))
        url = f"https://localhost:{https}"
        wait_until("Caddy serving", lambda: http(f"{url}/health", ctx=ctx)[0] == 200, 30, proc)
        yield url, ctx
    finally:
        proc.terminate()
        proc.wait(10)


def check_dcgm(url: str) -> tuple[str, str]:
    try:
        status, text = http(url, timeout=10)
    except OSError as exc:
        return "fail", (
            f"no DCGM exporter at {url} ({exc}); start compose's gpu profile (its "
            "dcgm-exporter is published on 127.0.0.1:9400) or point --dcgm-url at yours"
        )
    counters = sorted({line.split("{")[0] for line in text.splitlines()
                       if line.startswith("DCGM_FI_")})  # fmt: skip
    if status != 200 or "DCGM_FI_DEV_GPU_UTIL" not in counters:
        return "fail", f"{url} answered {status} without DCGM_FI_DEV_GPU_UTIL"
    return "pass", f"{len(counters)} DCGM counters, e.g. {', '.join(counters[:4])}"


def run_checks(args: argparse.Namespace) -> Report:
    report = Report()
    report.add("gpu", check_gpu)
    report.add("doctor", check_doctor)
    with (
        tempfile.TemporaryDirectory(prefix="vllama-gpu-check-") as tmp,
        serve(args, Path(tmp), report) as facade,
    ):
        if facade is None:
            for name in ("facade", "nvml", "proxy"):
                report.add(name, lambda: ("skip", "the façade did not start (see serve)"))
        else:
            report.add("facade", lambda: chat(facade.url, facade.model))
            report.add("nvml", lambda: check_nvml(facade))

            def via_proxy() -> tuple[str, str]:
                with caddy(facade.url, Path(tmp)) as (url, ctx):
                    return chat(url, facade.model, ctx)

            report.add("proxy", via_proxy)
    report.add("dcgm", lambda: check_dcgm(args.dcgm_url))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model to serve (default {DEFAULT_MODEL})"
    )
    p.add_argument("--engine", default="", help="front this running engine instead of starting one")
    p.add_argument(
        "--dcgm-url", default="http://127.0.0.1:9400/metrics", help="the DCGM exporter's /metrics"
    )
    p.add_argument("--timeout", type=float, default=480, help="seconds for the model to load")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    report = run_checks(args)
    if args.json:
        print(json.dumps({"ok": report.ok, "steps": [asdict(s) for s in report.steps]}, indent=2))
    else:
        print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
