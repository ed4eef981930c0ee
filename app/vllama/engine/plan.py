"""A host's declaration (`HostPlan`: "8 GPUs, one engine per GPU", "two TP=4 engines",
mixed models) turned into concrete engines: name, port, device ids, /dev/shm size, the
`vllama engine` command each runs and its environment, the façade's engine list and the
Prometheus targets. Pure: the same declaration always gives the same layout, so
`vllama plan --json` can feed Ansible and compose generators, and every shape is
unit-tested.

Rules:

- Every engine spans tensor_parallel_size x pipeline_parallel_size GPUs (vLLM runs that
  many workers on one host). Lines with explicit `gpus` take those ids; the others are
  assigned from the declared ids that are left, the lines with the widest engines first,
  so a TP=4 engine gets four neighbouring ids (0-3, 4-7) whatever the line order.
- `replicas = "fill"` (at most one line) takes every GPU left; its engine size must
  divide what is left.
- Ports: a line's `port` for its first replica, the next ones following; lines without
  one take free ports from `base_port` up, in declaration order.
- CUDA_DEVICE_ORDER=PCI_BUS_ID goes with CUDA_VISIBLE_DEVICES: CUDA's own default order
  (fastest first) can differ from nvidia-smi's, NVML's and DCGM's, which number by PCI bus.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from vllama.config import EngineConfig, HostPlan, PlannedEngine

# Engines listen on loopback or all interfaces; the façade on the same host reaches
# either through loopback.
_WILDCARD = {"0.0.0.0", "::", ""}
_SHM_SIZE = re.compile(r"^\d+(\.\d+)?[kmgt]?b?$", re.IGNORECASE)
# /dev/shm is a tmpfs: its size is a ceiling, pages take memory only when written.
# PyTorch passes tensors between vLLM's worker processes through it (vLLM's Docker guide:
# `--ipc=host` or `--shm-size`); the need grows with the workers an engine runs.
SHM_GB_PER_GPU = 4
CPU_SHM_SIZE = "1gb"


class PlanError(ValueError):
    """The declaration cannot be laid out; the message says which line and what to change."""


@dataclass(frozen=True)
class EnginePlan:
    """One engine the declaration yields."""

    name: str  # systemd instance / compose service: vllama-engine@NAME
    line: str  # the declaration line it comes from (its name)
    model: str
    served_name: str
    host: str  # where it listens
    port: int
    gpus: tuple[int, ...]  # device ids as nvidia-smi numbers them; () on a CPU host
    tensor_parallel_size: int
    pipeline_parallel_size: int
    shm_size: str
    args: tuple[str, ...]  # vLLM flags after the model, parallelism included
    extra_env: dict[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        """Where the façade on this host reaches it."""
        host = "127.0.0.1" if self.host in _WILDCARD else self.host
        return f"http://{host}:{self.port}"

    @property
    def cuda_visible_devices(self) -> str | None:
        return ",".join(str(g) for g in self.gpus) if self.gpus else None

    def env(self) -> dict[str, str]:
        """What `vllama engine` reads (systemd's EnvironmentFile, compose's environment)."""
        out = {
            "VLLAMA_ENGINE_MODEL": self.model,
            "VLLAMA_ENGINE_NAME": self.served_name,
            "VLLAMA_ENGINE_HOST": self.host,
            "VLLAMA_ENGINE_PORT": str(self.port),
            "VLLAMA_ENGINE_ARGS": json.dumps(list(self.args)),
        }
        if self.gpus:
            out["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            out["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices or ""
        out.update(self.extra_env)
        return out

    def command(self, vllama: str = "vllama") -> list[str]:
        """The one engine command (`vllama engine`, which builds vLLM's command line)."""
        return [
            vllama,
            "engine",
            "--model",
            self.model,
            "--served-name",
            self.served_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--",
            *self.args,
        ]

    def facade_engine(self) -> EngineConfig:
        # Declared capabilities override; none declared: the pool detects them (probes).
        caps = list(self.capabilities) or None
        return EngineConfig.model_validate(
            {"url": self.url, "models": [self.served_name], "capabilities": caps}
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "line": self.line,
            "model": self.model,
            "served_name": self.served_name,
            "host": self.host,
            "port": self.port,
            "url": self.url,
            "gpus": list(self.gpus),
            "cuda_visible_devices": self.cuda_visible_devices,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "shm_size": self.shm_size,
            "args": list(self.args),
            "env": self.env(),
            "command": self.command(),
            "capabilities": list(self.capabilities),
        }


@dataclass(frozen=True)
class HostLayout:
    """Every engine of one host, and what other parts derive from them."""

    gpus: tuple[int, ...]  # declared
    engines: tuple[EnginePlan, ...]
    address: str  # how Prometheus reaches this host's engines

    @property
    def unused_gpus(self) -> tuple[int, ...]:
        used = {g for e in self.engines for g in e.gpus}
        return tuple(g for g in self.gpus if g not in used)

    def owner(self, gpu: int) -> EnginePlan | None:
        return next((e for e in self.engines if gpu in e.gpus), None)

    def facade_engines(self) -> list[EngineConfig]:
        return [e.facade_engine() for e in self.engines]

    def prometheus_targets(self) -> list[dict[str, Any]]:
        """Prometheus file_sd entries: one per engine (vLLM serves /metrics on its port)."""
        return [
            {
                "targets": [f"{self.address}:{e.port}"],
                "labels": {
                    "engine": e.name,
                    "model_name": e.served_name,
                    "gpus": e.cuda_visible_devices or "",
                },
            }
            for e in self.engines
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "gpus": list(self.gpus),
            "unused_gpus": list(self.unused_gpus),
            "engines": [e.as_dict() for e in self.engines],
            "facade_engines": [
                c.model_dump(exclude_defaults=True) | {"url": c.url} for c in self.facade_engines()
            ],
            "prometheus_targets": self.prometheus_targets(),
        }


# --- laying out ------------------------------------------------------------------------


def _slug(text: str) -> str:
    base = text.rstrip("/").rsplit("/", 1)[-1].lower()
    slug = re.sub(r"[^a-z0-9]+", "-", base).strip("-")
    return slug or "engine"


def gpu_ranges(ids: tuple[int, ...] | list[int]) -> str:
    """Device ids as short text: 0,1,2,3 as "0-3"; gaps kept: "0-1,4"."""
    out: list[str] = []
    ordered = sorted(ids)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(f"{ordered[i]}-{ordered[j]}" if j > i else str(ordered[i]))
        i = j + 1
    return ",".join(out) or "none"


@dataclass
class _Line:
    index: int
    decl: PlannedEngine
    name: str
    served_name: str
    size: int  # GPUs per engine
    replicas: int = 0
    gpus: list[int] = field(default_factory=list)  # all replicas' ids, in order

    def describe(self) -> str:
        tp, pp = self.decl.tensor_parallel_size, self.decl.pipeline_parallel_size
        shape = f"TP={tp}" + (f" x PP={pp}" if pp > 1 else "")
        return f"'{self.name}' ({shape})"


def _lines(plan: HostPlan) -> list[_Line]:
    lines: list[_Line] = []
    for i, decl in enumerate(plan.engines):
        served = (decl.served_name or "").strip() or decl.model
        name = decl.name or _slug(decl.served_name or decl.model)
        size = decl.tensor_parallel_size * decl.pipeline_parallel_size
        lines.append(_Line(i, decl, name, served, size))
    seen: dict[str, _Line] = {}
    for line in lines:
        if line.name in seen:
            raise PlanError(
                f"engine lines {seen[line.name].index + 1} and {line.index + 1} are both named "
                f"'{line.name}'; give one of them another `name`"
            )
        seen[line.name] = line
    models: dict[str, _Line] = {}
    for line in lines:
        other = models.setdefault(line.served_name, line)
        if other.decl.model != line.decl.model:
            raise PlanError(
                f"'{other.name}' and '{line.name}' both serve the name '{line.served_name}' but "
                f"load different models ({other.decl.model}, {line.decl.model}); clients could "
                "not tell which answers: give them different served_name values"
            )
    return lines


# vLLM's parallelism flags (long and short spellings) and the declaration key for each.
_PARALLEL_FLAGS = {
    "--tensor-parallel-size": "tensor_parallel_size",
    "-tp": "tensor_parallel_size",
    "--pipeline-parallel-size": "pipeline_parallel_size",
    "-pp": "pipeline_parallel_size",
}


def _check_flags(line: _Line) -> None:
    for flag, key in _PARALLEL_FLAGS.items():
        if any(a == flag or a.startswith(flag + "=") for a in line.decl.args):
            raise PlanError(
                f"{line.describe()}: give {key} in the declaration, not {flag} in args "
                "(the plan assigns GPUs from it)"
            )


def _assign_gpus(lines: list[_Line], declared: list[int]) -> None:
    free = list(declared)
    if not declared:
        for line in lines:
            if line.decl.gpus:
                raise PlanError(
                    f"{line.describe()} names GPUs {line.decl.gpus} but the host declares none "
                    "(gpus = 0: a CPU host); declare the host's GPUs in `gpus`"
                )
            if line.decl.replicas == "fill":
                raise PlanError(
                    f'{line.describe()}: replicas = "fill" needs GPUs to fill and the host '
                    "declares none; give replicas a number"
                )
            line.replicas = int(line.decl.replicas)
        return

    fills = [ln for ln in lines if ln.decl.replicas == "fill"]
    if len(fills) > 1:
        names = " and ".join(ln.describe() for ln in fills)
        raise PlanError(f'{names} both ask for replicas = "fill"; only one line may fill')

    # Explicit ids first: they are what the operator pinned.
    for line in lines:
        ids = line.decl.gpus
        if ids is None:
            continue
        unknown = [g for g in ids if g not in declared]
        if unknown:
            raise PlanError(
                f"{line.describe()} names GPU(s) {gpu_ranges(unknown)} the host does not declare "
                f"(gpus: {gpu_ranges(declared)})"
            )
        taken = [g for g in ids if g not in free]
        if taken or len(set(ids)) != len(ids):
            raise PlanError(
                f"{line.describe()} names GPU(s) {gpu_ranges(taken or ids)} another engine already has; "
                "each GPU belongs to one engine"
            )
        if line.decl.replicas == "fill":
            if len(ids) % line.size:
                raise PlanError(
                    f"{line.describe()}: {line.size} GPUs per engine do not divide its "
                    f"{len(ids)} GPUs ({gpu_ranges(ids)})"
                )
            line.replicas = len(ids) // line.size
        else:
            line.replicas = int(line.decl.replicas)
            if len(ids) != line.size * line.replicas:
                raise PlanError(
                    f"{line.describe()} x {line.replicas} replica(s) needs "
                    f"{line.size * line.replicas} GPUs but names {len(ids)} ({gpu_ranges(ids)})"
                )
        line.gpus = list(ids)
        free = [g for g in free if g not in ids]

    counted = [ln for ln in lines if ln.decl.gpus is None and ln.decl.replicas != "fill"]
    for line in counted:
        line.replicas = int(line.decl.replicas)
    wanted = sum(ln.size * ln.replicas for ln in counted)
    if wanted > len(free):
        parts = ", ".join(f"{ln.name}: {ln.replicas} x {ln.size}" for ln in counted)
        pinned = len(declared) - len(free)
        raise PlanError(
            f"the engines ask for {wanted} GPUs ({parts}) but the host declares "
            f"{len(declared)} ({gpu_ranges(declared)})"
            + (f", {pinned} of them pinned by `gpus` lines" if pinned else "")
            + "; lower replicas or tensor_parallel_size, or declare more GPUs"
        )
    # Widest engines first: each takes the lowest free ids, so sizes that are powers of
    # two land on aligned neighbours (NVLink pairs, PCIe switches) whatever the line order.
    for line in sorted(counted, key=lambda ln: -ln.size):
        line.gpus, free = free[: line.size * line.replicas], free[line.size * line.replicas :]
    for line in fills:
        if not free:
            raise PlanError(
                f'{line.describe()}: replicas = "fill" but no GPU is left '
                f"(the other engines take all {len(declared)})"
            )
        if len(free) % line.size:
            fits = len(free) // line.size
            hint = (
                f"give replicas = {fits} ({fits * line.size} GPUs)"
                if fits
                else "lower tensor_parallel_size"
            )
            raise PlanError(
                f"{line.describe()}: {line.size} GPUs per engine do not divide the "
                f'{len(free)} GPUs left ({gpu_ranges(free)}) for replicas = "fill"; {hint}, or '
                "pick a size that divides them"
            )
        line.replicas = len(free) // line.size
        line.gpus, free = free, []


def _assign_ports(lines: list[_Line], base_port: int, facade_port: int | None) -> list[list[int]]:
    owners: dict[int, str] = {}
    if facade_port is not None:
        owners[facade_port] = "the façade"
    ports: list[list[int]] = [[] for _ in lines]

    def claim(port: int, who: str) -> None:
        if not 1 <= port <= 65535:
            raise PlanError(f"{who} would listen on port {port}, outside 1-65535")
        if port in owners:
            raise PlanError(
                f"port {port} is given to both {owners[port]} and {who}; move one `port`, "
                "or base_port"
            )
        owners[port] = who

    for line in lines:  # explicit ports first: they are what the operator pinned
        if line.decl.port is not None:
            for r in range(line.replicas):
                who = _engine_name(line, r)
                claim(line.decl.port + r, f"engine '{who}'")
                ports[line.index].append(line.decl.port + r)
    nxt = base_port
    for line in lines:
        if line.decl.port is not None:
            continue
        for r in range(line.replicas):
            while nxt in owners:
                nxt += 1
            claim(nxt, f"engine '{_engine_name(line, r)}'")
            ports[line.index].append(nxt)
    return ports


def _engine_name(line: _Line, replica: int) -> str:
    return line.name if line.replicas == 1 else f"{line.name}-{replica}"


def _shm_size(line: _Line, on_gpu: bool) -> str:
    if line.decl.shm_size is not None:
        if not _SHM_SIZE.match(line.decl.shm_size):
            raise PlanError(
                f"{line.describe()}: shm_size {line.decl.shm_size!r} is not a size (e.g. 8gb, 512m)"
            )
        return line.decl.shm_size
    return f"{SHM_GB_PER_GPU * line.size}gb" if on_gpu else CPU_SHM_SIZE


def _parallel_args(line: _Line) -> list[str]:
    out = list(line.decl.args)
    if line.decl.tensor_parallel_size > 1:
        out += ["--tensor-parallel-size", str(line.decl.tensor_parallel_size)]
    if line.decl.pipeline_parallel_size > 1:
        out += ["--pipeline-parallel-size", str(line.decl.pipeline_parallel_size)]
    return out


def plan_host(plan: HostPlan, *, facade_port: int | None = None) -> HostLayout:
    """Lay out every engine of `plan`; PlanError says what is wrong. `facade_port` (the
    façade's port when it runs on this host) is kept free of engines."""
    declared = list(range(plan.gpus)) if isinstance(plan.gpus, int) else sorted(plan.gpus)
    lines = _lines(plan)
    for line in lines:
        _check_flags(line)
        if declared and line.size > len(declared):
            raise PlanError(
                f"{line.describe()} needs {line.size} GPUs for one engine but the host "
                f"declares {len(declared)} ({gpu_ranges(declared)})"
            )
    _assign_gpus(lines, declared)
    ports = _assign_ports(lines, plan.base_port, facade_port)
    engines: list[EnginePlan] = []
    for line in lines:
        for r in range(line.replicas):
            gpus = tuple(line.gpus[r * line.size : (r + 1) * line.size]) if declared else ()
            engines.append(
                EnginePlan(
                    name=_engine_name(line, r),
                    line=line.name,
                    model=line.decl.model,
                    served_name=line.served_name,
                    host=plan.engine_host,
                    port=ports[line.index][r],
                    gpus=gpus,
                    tensor_parallel_size=line.decl.tensor_parallel_size,
                    pipeline_parallel_size=line.decl.pipeline_parallel_size,
                    shm_size=_shm_size(line, bool(declared)),
                    args=tuple(_parallel_args(line)),
                    extra_env=dict(line.decl.env),
                    capabilities=tuple(line.decl.capabilities),
                )
            )
    address = plan.address or ("127.0.0.1" if plan.engine_host in _WILDCARD else plan.engine_host)
    return HostLayout(gpus=tuple(declared), engines=tuple(engines), address=address)
