"""Host declarations (vllama's `[plan]`) shared by the tests of what derives from them:
the planner, `vllama plan`, Ansible's inventory (`vllama_plan`) and compose (`VLLAMA_PLAN`)."""

from __future__ import annotations

from typing import Any

# 8 GPUs: a TP=4 engine of one model on 0-3, one engine per GPU left (4-7) of another.
MIXED_8_GPUS: dict[str, Any] = {
    "gpus": 8,
    "engines": [
        {
            "model": "Qwen/Qwen2.5-32B-Instruct",
            "served_name": "qwen2.5:32b",
            "tensor_parallel_size": 4,
            "args": ["--max-model-len", "16384"],
        },
        {
            "model": "Qwen/Qwen2.5-7B-Instruct",
            "served_name": "qwen2.5:7b",
            "replicas": "fill",
            "env": {"VLLM_LOGGING_LEVEL": "WARNING"},
        },
    ],
}
