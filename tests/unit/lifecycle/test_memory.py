"""The memory estimate (lifecycle.memory; docs/lifecycle.md has the formula) on the
configs of real models, the utilization vLLM gets, budgets and placement."""

from __future__ import annotations

import pytest

from vllama.lifecycle.memory import (
    Device,
    GiB,
    MiB,
    budget_bytes,
    choose_devices,
    estimate,
    gpu_memory_utilization,
    kv_bytes_per_token,
)

# Qwen/Qwen2.5-0.5B-Instruct's config.json (the fields that matter here).
QWEN_05B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "num_hidden_layers": 24,
    "max_position_embeddings": 32768,
    "torch_dtype": "bfloat16",
}
LLAMA_31_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
}
DEEPSEEK_V3 = {
    "model_type": "deepseek_v3",
    "num_hidden_layers": 61,
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
    "num_attention_heads": 128,
    "torch_dtype": "bfloat16",
}
MINILM = {
    "model_type": "bert",
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "hidden_size": 384,
    "max_position_embeddings": 512,
}
QWEN_PARAMS = 494_032_768


def test_kv_cache_per_token_from_the_config() -> None:
    assert kv_bytes_per_token(QWEN_05B, 2) == 2 * 24 * 2 * 64 * 2  # 12 KiB
    assert kv_bytes_per_token(LLAMA_31_8B, 2) == 128 * 1024  # the well-known 128 KiB
    assert kv_bytes_per_token(LLAMA_31_8B, 1) == 64 * 1024  # fp8 cache
    assert kv_bytes_per_token(DEEPSEEK_V3, 2) == 61 * (512 + 64) * 2  # MLA: one latent
    assert kv_bytes_per_token(MINILM, 2) == 0  # encoder-only: no KV cache
    assert kv_bytes_per_token({"model_type": "x"}, 2) is None


def test_qwen_on_a_gpu_with_the_defaults() -> None:
    need = estimate(
        QWEN_05B,
        files_bytes=988_097_824,
        parameter_count=QWEN_PARAMS,
        engine_args=[],
        context_length=4096,
        num_parallel=4,
        overhead=2 * GiB,
    )
    assert need.weights == QWEN_PARAMS * 2
    assert need.context == 4096  # capped from the model's 32768
    assert need.kv_cache == 12288 * 4096 * 4  # 192 MiB
    assert need.per_device == QWEN_PARAMS * 2 + 192 * MiB + 2 * GiB
    assert gpu_memory_utilization(need.per_device, 80 * GiB) == 0.04  # 3.11 GiB of 80
    assert "KV cache 192 MiB for 4 × 4096 tokens" in need.describe()


def test_engine_flags_win_over_the_defaults() -> None:
    base = dict(
        files_bytes=0,
        parameter_count=QWEN_PARAMS,
        context_length=4096,
        num_parallel=4,
        overhead=GiB,
    )
    long = estimate(QWEN_05B, engine_args=["--max-model-len", "32768"], **base)  # type: ignore[arg-type]
    assert long.kv_cache == 12288 * 32768 * 4
    f32 = estimate(QWEN_05B, engine_args=["--dtype=float32"], **base)  # type: ignore[arg-type]
    assert f32.weights == QWEN_PARAMS * 4 and f32.kv_cache == 12288 * 2 * 4096 * 4
    fp8 = estimate(QWEN_05B, engine_args=["--kv-cache-dtype", "fp8"], **base)  # type: ignore[arg-type]
    assert fp8.kv_cache == 12288 // 2 * 4096 * 4
    tp = estimate(QWEN_05B, engine_args=["--tensor-parallel-size", "2"], **base)  # type: ignore[arg-type]
    assert tp.devices == 2 and tp.per_device == (tp.weights + tp.kv_cache) // 2 + GiB
    fixed = estimate(
        QWEN_05B,
        engine_args=["--gpu-memory-utilization", "0.5"],
        device_total=80 * GiB,
        **base,  # type: ignore[arg-type]
    )
    assert fixed.per_device == 40 * GiB  # vLLM takes exactly its share
    cpu = estimate(QWEN_05B, engine_args=[], cpu_kv_space=GiB, **base)  # type: ignore[arg-type]
    assert cpu.kv_cache == GiB  # VLLM_CPU_KVCACHE_SPACE wins on the CPU build


def test_quantized_and_unknown_models_use_the_file_size() -> None:
    awq = {**QWEN_05B, "quantization_config": {"quant_method": "awq"}}
    need = estimate(
        awq,
        files_bytes=450 * MiB,
        parameter_count=QWEN_PARAMS,
        engine_args=[],
        context_length=4096,
        num_parallel=1,
        overhead=0,
    )
    assert need.weights == 450 * MiB
    odd = estimate(
        {},
        files_bytes=400 * MiB,
        parameter_count=None,
        engine_args=[],
        context_length=4096,
        num_parallel=4,
        overhead=0,
    )
    assert odd.weights == 400 * MiB and odd.kv_cache == 100 * MiB  # a quarter of the weights


def test_budgets() -> None:
    assert budget_bytes("90%", 80 * GiB) == 72 * GiB
    assert budget_bytes("20GiB", 80 * GiB) == 20 * GiB
    assert budget_bytes("200GiB", 80 * GiB) == 80 * GiB  # never more than the device


@pytest.mark.parametrize(
    ("room", "count", "chosen"),
    [
        ({0: 10 * GiB, 1: 30 * GiB}, 1, (1,)),  # the roomiest
        ({0: 10 * GiB, 1: 30 * GiB}, 2, (0, 1)),
        ({0: 1 * GiB, 1: 30 * GiB}, 2, None),  # GPU 0 cannot hold its half
        ({0: 5 * GiB}, 1, (0,)),
    ],
)
def test_placement(room: dict[int, int], count: int, chosen: tuple[int, ...] | None) -> None:
    devices = [Device(i, "gpu", 80 * GiB) for i in room]
    assert choose_devices(5 * GiB, count, devices, room) == chosen
