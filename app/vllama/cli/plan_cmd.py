"""`vllama plan`: the engines a host's declaration yields (engine/plan.py), from the config
file's `[plan]` or a TOML/JSON file (`--file`, `-` for stdin). `--json` is what Ansible and
compose generators read; without it, a table for people."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from vllama.cli.output import OK, USAGE, CliError, emit_json, table
from vllama.config import HostPlan, Settings, load_plan_file, parse_plan
from vllama.engine.plan import HostLayout, PlanError, gpu_ranges, plan_host


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--file",
        type=Path,
        default=None,
        help="the declaration (TOML or JSON: a [plan] table or the table itself; - reads "
        "stdin) instead of the config's [plan]",
    )
    p.add_argument(
        "--address",
        default=None,
        help="this host's address for the Prometheus targets (default: the plan's address)",
    )
    p.add_argument("--json", action="store_true", help="print the layout as JSON")


def declaration(args: argparse.Namespace, settings: Settings) -> HostPlan:
    if args.file is None:
        if settings.plan is None:
            raise CliError(
                "no [plan] in the configuration: add one (`vllama config` prints an example) "
                "or give --file PATH",
                USAGE,
            )
        return settings.plan
    if str(args.file) == "-":
        return parse_plan(sys.stdin.read(), "stdin")
    return load_plan_file(args.file)


def layout(settings: Settings, plan: HostPlan | None = None) -> HostLayout:
    """The layout of `plan` (default: the config's), the façade's port kept free."""
    plan = plan if plan is not None else settings.plan
    if plan is None:
        raise CliError("no [plan] in the configuration", USAGE)
    try:
        return plan_host(plan, facade_port=settings.port)
    except PlanError as exc:
        raise CliError(f"the plan cannot be laid out: {exc}", USAGE) from exc


def with_planned_engines(settings: Settings) -> None:
    """Add the config's planned engines to `settings.engines` (the façade fronts them)."""
    if settings.plan is None:
        return
    known = {e.url for e in settings.engines}
    planned = [e for e in layout(settings).facade_engines() if e.url not in known]
    settings.engines = [*settings.engines, *planned]


def render(lay: HostLayout) -> str:
    gpus = f"{len(lay.gpus)} GPU(s): {gpu_ranges(lay.gpus)}" if lay.gpus else "no GPU (CPU host)"
    lines = [gpus + (f"; unused: {gpu_ranges(lay.unused_gpus)}" if lay.unused_gpus else "")]
    rows = [["ENGINE", "SERVES", "GPUS", "TP", "PP", "PORT", "SHM"]]
    for e in lay.engines:
        rows.append(
            [
                e.name,
                e.served_name,
                gpu_ranges(e.gpus) if e.gpus else "-",
                str(e.tensor_parallel_size),
                str(e.pipeline_parallel_size),
                str(e.port),
                e.shm_size,
            ]
        )
    lines += ["", table(rows), ""]
    for e in lay.engines:
        env = f"CUDA_VISIBLE_DEVICES={e.cuda_visible_devices} " if e.gpus else ""
        lines.append(f"{e.name}: {env}{shlex.join(e.command())}")
    lines.append("")
    lines.append("façade engines: " + ", ".join(e.url for e in lay.engines))
    targets = [t for entry in lay.prometheus_targets() for t in entry["targets"]]
    lines.append("Prometheus targets: " + ", ".join(targets))
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: Settings, sources: dict[str, str]) -> int:
    plan = declaration(args, settings)
    if args.address:
        plan = plan.model_copy(update={"address": args.address})
    lay = layout(settings, plan)
    if args.json:
        emit_json(lay.as_dict())
    else:
        print(render(lay))
    return OK
