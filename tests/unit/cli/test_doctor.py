"""`vllama doctor` verdicts from injected facts, and one real run on this machine."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from vllama.cli.doctor import Check, EngineFact, Facts, Gpu, evaluate
from vllama.cli.main import main
from vllama.config import HostPlan
from vllama.engine.pins import VLLM_CUDA, VLLM_VERSION
from vllama.engine.plan import HostLayout, plan_host

GB = 10**9


def _status(checks: list[Check], name: str) -> str:
    return next(c.status for c in checks if c.name == name)


def healthy() -> Facts:
    return Facts(
        driver="580.95.05",
        gpus=[Gpu(0, "NVIDIA L4", 24 * GB, 20 * GB)],
        disk_free=500 * GB,
        cache_dir="/models",
        engines=[EngineFact("http://e:8000", True, True, "serves models")],
    )


def test_a_healthy_gpu_host_passes() -> None:
    checks = evaluate(healthy())
    assert {c.status for c in checks} == {"ok"}
    assert "NVIDIA L4" in next(c.detail for c in checks if c.name == "gpu")


@pytest.mark.parametrize(
    ("driver", "status"),
    [
        ("580.65.06", "ok"),
        ("590.44.01", "ok"),
        ("575.57.08", "fail"),
        ("535.261.03", "fail"),
        ("", "warn"),
    ],
)
def test_driver_must_run_the_pinned_vllm_cuda_build(driver: str, status: str) -> None:
    f = healthy()
    f.driver = driver
    check = next(c for c in evaluate(f) if c.name == "driver")
    assert check.status == status
    if status == "fail":
        # Names the driver it found, the one needed, and why (the pinned build's CUDA).
        assert driver in check.detail and "580 or newer" in check.detail
        assert f"vLLM {VLLM_VERSION}" in check.detail and f"CUDA {VLLM_CUDA}" in check.detail
        assert "install NVIDIA driver 580 or newer" in check.hint


def test_cpu_build_does_not_judge_the_driver() -> None:
    f = healthy()
    f.driver, f.cpu_build = "470.256.02", True
    assert all(c.name != "driver" for c in evaluate(f))


def test_no_gpu_is_a_warning_with_the_cpu_build_and_a_failure_without() -> None:
    f = Facts(nvml_error="NVML Shared Library Not Found", cpu_build=True, disk_free=100 * GB)
    checks = evaluate(f)
    assert _status(checks, "gpu") == "warn"
    assert "NVML Shared Library Not Found" in next(c.detail for c in checks if c.name == "gpu")
    f.cpu_build = False
    gpu = next(c for c in evaluate(f) if c.name == "gpu")
    assert gpu.status == "fail" and "driver" in gpu.hint


def test_low_free_gpu_memory_warns() -> None:
    f = healthy()
    f.gpus = [Gpu(0, "NVIDIA L4", 24 * GB, 1 * GB)]
    assert _status(evaluate(f), "gpu0-memory") == "warn"


@pytest.mark.parametrize(
    ("cvd", "status"), [(None, "ok"), ("0", "ok"), ("", "fail"), ("-1", "fail"), ("3", "fail")]
)
def test_cuda_visible_devices(cvd: str | None, status: str) -> None:
    f = healthy()
    f.cuda_visible_devices = cvd
    assert _status(evaluate(f), "cuda-visible-devices") == status


@pytest.mark.parametrize(("free", "status"), [(1 * GB, "fail"), (10 * GB, "warn"), (90 * GB, "ok")])
def test_disk_space(free: int, status: str) -> None:
    f = healthy()
    f.disk_free = free
    assert _status(evaluate(f), "disk") == status


def test_port_taken_by_a_stranger_fails_but_by_vllama_is_fine() -> None:
    f = healthy()
    f.port_free = False
    assert _status(evaluate(f), "port") == "fail"
    f.port_answer = "Ollama is running"
    assert _status(evaluate(f), "port") == "ok"


def test_engines_and_config() -> None:
    f = healthy()
    f.engines = [
        EngineFact("http://a:1", False, False, "connection refused"),
        EngineFact("http://b:2", True, False, "/health answered 503"),
    ]
    f.config_error = "invalid configuration: port: ..."
    checks = evaluate(f)
    assert _status(checks, "engine http://a:1") == "fail"
    assert _status(checks, "engine http://b:2") == "fail"
    assert _status(checks, "config") == "fail"


def test_real_run_reports_a_dead_engine_and_a_taken_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.procs import free_port

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    dead = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "vllama.toml").write_text(
            f'port = {port}\ncache_dir = "{tmp_path}"\n[[engines]]\nurl = "http://127.0.0.1:{dead}"\n'
        )
        code = main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["ok"] is False
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name[f"engine http://127.0.0.1:{dead}"]["status"] == "fail"
    assert by_name["port"]["status"] == "fail"
    assert by_name["config"]["status"] == "ok"
    assert by_name["disk"]["status"] in {"ok", "warn"}
    assert by_name["gpu"]["status"] in {"ok", "warn"}  # this machine: the CPU build, no GPU


def test_invalid_config_is_a_finding_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vllama.toml").write_text("max_queue = -5\n")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] config" in out and "max_queue" in out


def test_gathering_uses_the_one_nvml_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.observability.test_gpu import nvml_standin
    from vllama.cli.doctor import gather_facts

    monkeypatch.setitem(sys.modules, "pynvml", nvml_standin(count=1))
    f = gather_facts(None, None)
    assert f.driver == "560.35.03" and f.nvml_error is None
    assert f.gpus == [Gpu(0, "NVIDIA H100 80GB HBM3", 80 * 2**30, 78 * 2**30)]
    monkeypatch.setitem(sys.modules, "pynvml", None)  # the package missing, for real
    f = gather_facts(None, None)
    assert f.gpus == [] and f.nvml_error is not None and "nvidia-ml-py" in f.nvml_error


def _planned(gpus: int, *engines: dict[str, object]) -> HostLayout:
    return plan_host(HostPlan.model_validate({"gpus": gpus, "engines": list(engines)}))


def test_doctor_shows_which_engine_owns_which_gpu() -> None:
    f = healthy()
    f.gpus = [Gpu(i, "NVIDIA H100", 80 * GB, 70 * GB) for i in range(4)]
    f.plan = _planned(
        4,
        {"model": "org/big", "name": "big", "served_name": "big", "tensor_parallel_size": 2},
        {"model": "org/small", "name": "small", "served_name": "small"},
    )
    checks = {c.name: c for c in evaluate(f)}
    assert (
        checks["plan"].status == "ok"
        and "2 engine(s) on 4 declared GPU(s)" in checks["plan"].detail
    )
    assert "engine big (big, TP=2 on GPU(s) 0-1, port 8001)" in checks["gpu1-engine"].detail
    assert "engine small (small, TP=1 on GPU(s) 2, port 8002)" in checks["gpu2-engine"].detail
    assert checks["gpu3-engine"].status == "warn"
    assert "declared but no engine uses it" in checks["gpu3-engine"].detail


def test_doctor_fails_a_plan_for_gpus_nvml_does_not_see() -> None:
    f = healthy()  # one GPU
    f.plan = _planned(2, {"model": "org/m", "name": "m", "replicas": "fill"})
    checks = {c.name: c for c in evaluate(f)}
    assert checks["plan-gpus"].status == "fail"
    assert "declares GPU(s) 1 but NVML sees 1 (0)" in checks["plan-gpus"].detail
    assert checks["gpu1-engine"].status == "fail"
    assert "NVML does not see this GPU" in checks["gpu1-engine"].detail
    assert checks["gpu0-engine"].status == "ok"


def test_doctor_reports_a_plan_that_cannot_be_laid_out() -> None:
    f = healthy()
    f.plan_error = "the engines ask for 10 GPUs"
    check = next(c for c in evaluate(f) if c.name == "plan")
    assert check.status == "fail" and "10 GPUs" in check.detail
