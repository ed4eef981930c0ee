"""Engine error bodies in every shape vLLM (old and new) and FastAPI produce."""

from __future__ import annotations

import json

from vllama.upstream.client import error_message
from vllama.upstream.discovery import kind_from_architectures


def test_openai_shape() -> None:
    body = {
        "error": {"message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404}
    }
    assert error_message(404, json.dumps(body).encode()) == "The model `x` does not exist."


def test_flat_old_vllm_shape() -> None:
    body = {"object": "error", "message": "max_tokens too large", "code": 400}
    assert error_message(400, json.dumps(body).encode()) == "max_tokens too large"


def test_fastapi_detail_shapes() -> None:
    assert error_message(404, b'{"detail":"Not Found"}') == "Not Found"
    detail = {"detail": [{"loc": ["body", "messages"], "msg": "Field required"}]}
    assert error_message(422, json.dumps(detail).encode()) == "messages: Field required"


def test_text_and_empty_bodies() -> None:
    assert error_message(502, b"bad gateway\n") == "bad gateway"
    assert error_message(500, b"") == "engine answered HTTP 500"


def test_kind_from_architectures() -> None:
    assert kind_from_architectures({"architectures": ["LlamaForCausalLM"]}) == "completion"
    assert kind_from_architectures({"architectures": ["BertModel"]}) == "embedding"
    assert kind_from_architectures({"architectures": ["XLMRobertaForSequenceClassification"]}) == (
        "embedding"
    )
    assert kind_from_architectures({}) is None
    assert kind_from_architectures(None) is None
