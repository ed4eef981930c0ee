"""Capability probes: verdicts on answers recorded from vLLM 0.32 (CPU build), both ways.

The same probes run against real engines in tests/integration/test_agents.py; these keep
the reading of each answer (and of the odd ones) exact.
"""

from __future__ import annotations

from typing import Any

import pytest

from vllama.config import EngineConfig
from vllama.upstream.breaker import CircuitBreaker
from vllama.upstream.capabilities import Detected, probes, verdict, vision_in_config
from vllama.upstream.discovery import ModelCard
from vllama.upstream.pool import Engine


def refusal(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}}


# Recorded from vLLM 0.32.0: the demo engine (no parsers, text-only) and the scripted one
# (--enable-auto-tool-choice --tool-call-parser hermes --reasoning-parser qwen3, Idefics3).
NO_AUTO_TOOLS = refusal(
    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
)
ZERO_TOKENS = refusal("max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)")
NOT_MULTIMODAL = refusal("vllama-demo is not a multimodal model")
USAGE_PLAIN = {
    "choices": [{"message": {"role": "assistant", "content": '{"'}}],
    "usage": {"prompt_tokens": 19, "completion_tokens": 1, "completion_tokens_details": None},
}
USAGE_REASONING = {
    "choices": [{"message": {"role": "assistant", "content": "The answer"}}],
    "usage": {
        "prompt_tokens": 16,
        "completion_tokens": 1,
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}


@pytest.mark.parametrize(
    ("name", "status", "answer", "expected"),
    [
        ("tools", 400, NO_AUTO_TOOLS, False),
        ("tools", 400, ZERO_TOKENS, True),
        ("vision", 400, NOT_MULTIMODAL, False),
        ("vision", 400, ZERO_TOKENS, True),
        ("thinking", 200, USAGE_PLAIN, False),
        ("thinking", 200, USAGE_REASONING, True),
        # Answers that do not tell: unknown, retried at the next discovery.
        ("tools", 200, USAGE_PLAIN, None),
        ("tools", 503, refusal("overloaded"), None),
        ("vision", 404, refusal("The model `x` does not exist."), None),
        ("thinking", 400, ZERO_TOKENS, None),
        ("thinking", 200, {"choices": []}, None),
        ("thinking", 200, None, None),
        # A refusal for another reason says nothing about the capability.
        ("tools", 400, refusal("Expected field `name` in `function`"), None),
        ("vision", 400, refusal("Unsupported Media Type"), None),
    ],
)
def test_verdicts(name: str, status: int, answer: Any, expected: bool | None) -> None:
    assert verdict(name, status, answer) is expected


def test_only_the_thinking_probe_generates_and_it_asks_one_token() -> None:
    bodies = {p.name: p.body for p in probes("m")}
    assert bodies["tools"]["max_tokens"] == 0 and bodies["vision"]["max_tokens"] == 0
    assert bodies["tools"]["tool_choice"] == "auto"
    assert bodies["thinking"]["max_tokens"] == 1
    assert all(body["model"] == "m" for body in bodies.values())


def test_detected_lists_what_was_found_and_knows_when_it_is_complete() -> None:
    done = Detected({"tools": True, "vision": False, "thinking": True})
    assert done.capabilities == {"tools", "thinking"} and done.complete
    assert not Detected({"tools": True, "vision": None, "thinking": False}).complete


def test_vision_comes_from_the_vision_config() -> None:
    assert vision_in_config({"model_type": "idefics3", "vision_config": {"patch_size": 8}})
    assert not vision_in_config({"model_type": "llama"})
    assert not vision_in_config(None)


def _engine(capabilities: list[str] | None) -> Engine:
    config = EngineConfig.model_validate({"url": "http://e:1", "capabilities": capabilities})
    return Engine(config, CircuitBreaker())


CARD = ModelCard("m", 512, None, 0, "completion")


def test_the_pool_reports_what_the_probes_found_when_nothing_is_configured() -> None:
    engine = _engine(None)
    assert engine.wants_probe and engine.capabilities(CARD) == {"completion"}
    engine.detected = Detected({"tools": True, "vision": None, "thinking": True})
    assert engine.capabilities(CARD) == {"completion", "tools", "thinking"}
    assert engine.wants_probe  # vision still unknown: asked again at the next discovery
    engine.detected = Detected({"tools": True, "vision": False, "thinking": True})
    assert not engine.wants_probe


@pytest.mark.parametrize("declared", [[], ["vision"]])
def test_a_configured_list_overrides_and_is_never_probed(declared: list[str]) -> None:
    engine = _engine(declared)  # engines vllama starts give their arguments' list this way
    engine.detected = Detected({"tools": True, "vision": True, "thinking": True})
    assert not engine.wants_probe
    assert engine.capabilities(CARD) == {"completion", *declared}
