"""The engine command line: vLLM's module entry point, CPU-build defaults, capabilities."""

from __future__ import annotations

import sys
from pathlib import Path

from vllama.config import ModelLaunch, Settings
from vllama.engine.launch import capabilities_from_args, engine_spec


def _settings(**kw: object) -> Settings:
    return Settings.model_validate(kw)


def test_repo_id_on_a_gpu_build() -> None:
    spec = engine_spec(
        ModelLaunch(model="qwen", engine_args=["--max-model-len", "8192"]),
        _settings(aliases={"qwen": "Qwen/Qwen2.5-0.5B-Instruct"}),
        8100,
        cpu_build=False,
        environ={},
    )
    assert spec.command[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    cmd = " ".join(spec.command)
    assert "--host 127.0.0.1 --port 8100" in cmd
    assert (
        "--model Qwen/Qwen2.5-0.5B-Instruct --served-model-name Qwen/Qwen2.5-0.5B-Instruct" in cmd
    )
    assert "--dtype" not in cmd and cmd.endswith(
        "--max-model-len 8192 --enable-per-request-metrics"
    )
    assert "VLLM_CPU_KVCACHE_SPACE" not in spec.env and "HF_HUB_OFFLINE" not in spec.env
    assert spec.url == "http://127.0.0.1:8100"
    assert spec.engine_config().models == ["Qwen/Qwen2.5-0.5B-Instruct"]


def test_local_dir_on_the_cpu_build(tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    spec = engine_spec(
        ModelLaunch(model=str(model)),
        _settings(engine_python="/opt/vllm/bin/python"),
        9000,
        cpu_build=True,
        demo=True,
        environ={},
    )
    assert spec.command[0] == "/opt/vllm/bin/python"
    cmd = " ".join(spec.command)
    assert "--served-model-name my-model" in cmd
    assert "--dtype bfloat16" in cmd and "--max-model-len 512" in cmd
    assert spec.env["VLLM_CPU_KVCACHE_SPACE"] == "1" and spec.env["HF_HUB_OFFLINE"] == "1"


def test_user_flags_win_over_cpu_defaults() -> None:
    spec = engine_spec(
        ModelLaunch(
            model="m", served_name="x", engine_args=["--dtype=float32", "--max-model-len", "64"]
        ),
        _settings(),
        9001,
        cpu_build=True,
        demo=True,
        environ={"VLLM_CPU_KVCACHE_SPACE": "4"},
    )
    assert spec.command.count("--max-model-len") == 1 and "bfloat16" not in spec.command
    assert "VLLM_CPU_KVCACHE_SPACE" not in spec.env  # the user's own value stays
    assert spec.name == "x"


def test_parsers_become_capabilities() -> None:
    # A parser alone: vLLM still refuses tool_choice "auto", so no tool calls arrive.
    assert capabilities_from_args(["--tool-call-parser", "hermes"]) == []
    assert capabilities_from_args(
        ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    ) == ["tools"]
    assert capabilities_from_args(["--enable-auto-tool-choice", "--reasoning-parser=qwen3"]) == [
        "tools",
        "thinking",
    ]
    assert capabilities_from_args(["--max-model-len", "9"]) == []
    spec = engine_spec(
        ModelLaunch(model="m", engine_args=["--reasoning-parser", "x"]),
        _settings(),
        1,
        cpu_build=False,
        environ={},
    )
    assert spec.engine_config().capabilities == ["thinking"]


def test_a_vision_model_is_reported_with_its_parsers() -> None:
    launch = ModelLaunch(model="m", engine_args=["--enable-auto-tool-choice"])
    spec = engine_spec(launch, _settings(), 1, cpu_build=False, vision=True)
    assert spec.engine_config().capabilities == ["tools", "vision"]
    plain = engine_spec(ModelLaunch(model="m"), _settings(), 1, cpu_build=False)
    assert plain.engine_config().capabilities == []  # given, so never probed


def test_images_use_the_one_cache_layout() -> None:
    """vllama's cache_dir is $HF_HOME/hub in every image, so the façade's pulls and the
    engines (HF_HUB_CACHE from launch.cache_env, or HF_HOME's default) share one folder."""
    import re

    repo = Path(__file__).resolve().parents[3]
    text = (repo / "images" / "Dockerfile").read_text()
    # Each ENV block (the runtime base of facade and vllm-cpu, the vllm target) says it.
    blocks = [b for b in text.split("\nENV ") if "HF_HOME=" in b]
    assert len(blocks) == 2, blocks
    for block in blocks:
        home = re.search(r"HF_HOME=(\S+)", block)
        cache = re.search(r"VLLAMA_CACHE_DIR=(\S+)", block)
        hub = re.search(r"HF_HUB_CACHE=(\S+)", block)
        assert home and cache and hub, block
        assert cache.group(1) == hub.group(1) == f"{home.group(1)}/hub", block


def test_memory_budget_placement_and_sleep_mode_reach_the_engine() -> None:
    """What the lifecycle scheduler asks for: the GPUs it placed the engine on, vLLM's
    sleep mode with the dev-mode switch its /sleep and /wake_up need (vLLM 0.32), and on
    the CPU build a KV cache sized by --kv-cache-memory-bytes (which
    VLLM_CPU_KVCACHE_SPACE would override, so it is not set then)."""
    gpu = engine_spec(
        ModelLaunch(model="org/m"),
        _settings(),
        9100,
        cpu_build=False,
        environ={},
        devices=[2, 3],
        sleep_mode=True,
    )
    assert gpu.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert gpu.env["VLLM_SERVER_DEV_MODE"] == "1" and "--enable-sleep-mode" in gpu.command
    plain = engine_spec(ModelLaunch(model="org/m"), _settings(), 9101, cpu_build=False, environ={})
    assert "CUDA_VISIBLE_DEVICES" not in plain.env and "VLLM_SERVER_DEV_MODE" not in plain.env
    sized = engine_spec(
        ModelLaunch(model="org/m", engine_args=["--kv-cache-memory-bytes", "16777216"]),
        _settings(),
        9102,
        cpu_build=True,
        environ={},
    )
    assert "VLLM_CPU_KVCACHE_SPACE" not in sized.env


def test_engines_report_per_request_timings_unless_stats_are_off() -> None:
    # /api stream:false is answered whole by engines whose answers carry their timings.
    from vllama.config import Settings
    from vllama.engine.launch import ModelLaunch, engine_spec

    settings = Settings()
    plain = engine_spec(ModelLaunch(model="m"), settings, 8001, cpu_build=False)
    assert plain.command.count("--enable-per-request-metrics") == 1
    given = ModelLaunch(model="m", engine_args=["--enable-per-request-metrics"])
    assert (
        engine_spec(given, settings, 8001, cpu_build=True).command.count(
            "--enable-per-request-metrics"
        )
        == 1
    )
    quiet = ModelLaunch(model="m", engine_args=["--disable-log-stats"])
    assert (
        "--enable-per-request-metrics"
        not in engine_spec(quiet, settings, 8001, cpu_build=False).command
    )  # vLLM refuses the two together


def test_a_headless_share_of_a_multi_node_engine_runs_vllms_serve_command() -> None:
    """A worker of a model larger than one host has no API server: the OpenAI server module
    would ignore --headless and listen; vLLM's serve command runs the worker processes."""
    multi_node = ["--pipeline-parallel-size", "2", "--nnodes", "2", "--master-addr", "10.1.0.11"]
    worker = engine_spec(
        ModelLaunch(model="m", engine_args=[*multi_node, "--node-rank", "1", "--headless"]),
        _settings(),
        8001,
        cpu_build=False,
        environ={},
    )
    assert worker.command[1:3] == ["-m", "vllama.engine.vllm_serve"]
    assert worker.command[-3:-1] == ["1", "--headless"]
    head = engine_spec(
        ModelLaunch(model="m", engine_args=[*multi_node, "--node-rank", "0"]),
        _settings(),
        8001,
        cpu_build=False,
        environ={},
    )
    assert head.command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
