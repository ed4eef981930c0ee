"""The OpenAPI 3.1 document of what vllama serves: the Ollama API, the `/v1` routes it
passes to vLLM, health and metrics.

It is written here, not derived from the routes: the routes take raw bodies (for speed
and to pass unknown fields through), so FastAPI cannot see their shapes. The rendered
document is kept in docs/openapi.json (`python -m vllama.server.openapi > docs/openapi.json`);
with `openapi = true` the façade serves it at /openapi.json. Tests check that the file,
the served document and the app's routes agree, and fuzz the real façade with it
(schemathesis; tests/integration/test_fuzz.py).

Fields follow Ollama's API reference (docs/api.md in ollama/ollama) and OpenAI's; the
`/v1` bodies allow any other field, since vLLM's own extensions pass through.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from vllama import __version__

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: Schema, required: tuple[str, ...] = (), *, extra: bool = True) -> Schema:
    out: Schema = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    if not extra:
        out["additionalProperties"] = False
    return out


_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_MODEL = {"type": "string", "minLength": 1, "description": "a model id or alias (`name:tag`)"}
_KEEP_ALIVE = {
    "oneOf": [_NUM, _STR],
    "description": "seconds, or a Go duration such as `5m`; accepted for compatibility",
}
_FORMAT = {"oneOf": [{"type": "string", "enum": ["json"]}, {"type": "object"}]}
_THINK = {"oneOf": [_BOOL, {"type": "string", "enum": ["low", "medium", "high"]}]}
_STOP = {"oneOf": [_STR, {"type": "array", "items": _STR}]}

_OPTIONS = _obj(
    {
        "num_predict": {**_INT, "description": "tokens to generate (max_tokens)"},
        "num_ctx": _INT,
        "temperature": _NUM,
        "top_k": _INT,
        "top_p": _NUM,
        "min_p": _NUM,
        "seed": _INT,
        "stop": _STOP,
        "repeat_penalty": _NUM,
        "presence_penalty": _NUM,
        "frequency_penalty": _NUM,
    }
)
_TOOL_CALL = _obj(
    {"function": _obj({"name": _STR, "arguments": {"type": "object"}}, ("name",))},
    ("function",),
)
_MESSAGE = _obj(
    {
        "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
        "content": _STR,
        "thinking": _STR,
        "images": {"type": "array", "items": {**_STR, "contentEncoding": "base64"}},
        "tool_calls": {"type": "array", "items": _TOOL_CALL},
        "tool_name": _STR,
    },
    ("role",),
)
_DURATIONS = {
    "total_duration": _INT,
    "load_duration": _INT,
    "prompt_eval_count": _INT,
    "prompt_eval_duration": _INT,
    "eval_count": _INT,
    "eval_duration": _INT,
}
_MODEL_ENTRY = _obj(
    {
        "name": _STR,
        "model": _STR,
        "modified_at": _STR,
        "size": _INT,
        "digest": _STR,
        "details": {"type": "object"},
    },
    ("name", "model"),
)
_OPENAI_MODEL = _obj({"id": _STR, "object": _STR, "created": _INT, "owned_by": _STR}, ("id",))

COMPONENTS: Schema = {
    "OllamaError": _obj({"error": _STR}, ("error",)),
    "OpenAIError": _obj(
        {
            "error": _obj(
                {
                    "message": _STR,
                    "type": _STR,
                    "code": {"type": ["integer", "string", "null"]},
                    "param": {"type": ["string", "null"]},
                },
                ("message", "type"),
            )
        },
        ("error",),
    ),
    "Options": _OPTIONS,
    "Message": _MESSAGE,
    "ChatRequest": _obj(
        {
            "model": _MODEL,
            "messages": {"type": "array", "items": _ref("Message")},
            "stream": _BOOL,
            "format": _FORMAT,
            "options": _ref("Options"),
            "keep_alive": _KEEP_ALIVE,
            "tools": {"type": "array", "items": {"type": "object"}},
            "think": _THINK,
        },
        ("model",),
    ),
    "ChatResponse": _obj(
        {
            "model": _STR,
            "created_at": _STR,
            "message": _ref("Message"),
            "done": _BOOL,
            "done_reason": _STR,
            **_DURATIONS,
        },
        ("model", "done"),
    ),
    "GenerateRequest": _obj(
        {
            "model": _MODEL,
            "prompt": _STR,
            "suffix": _STR,
            "system": _STR,
            "template": _STR,
            "raw": _BOOL,
            "images": {"type": "array", "items": {**_STR, "contentEncoding": "base64"}},
            "stream": _BOOL,
            "format": _FORMAT,
            "options": _ref("Options"),
            "keep_alive": _KEEP_ALIVE,
            "think": _THINK,
        },
        ("model",),
    ),
    "GenerateResponse": _obj(
        {
            "model": _STR,
            "created_at": _STR,
            "response": _STR,
            "thinking": _STR,
            "done": _BOOL,
            "done_reason": _STR,
            **_DURATIONS,
        },
        ("model", "done"),
    ),
    "EmbedRequest": _obj(
        {
            "model": _MODEL,
            "input": {"oneOf": [_STR, {"type": "array", "items": _STR}]},
            "truncate": _BOOL,
            "dimensions": {**_INT, "minimum": 1},
            "options": _ref("Options"),
            "keep_alive": _KEEP_ALIVE,
        },
        ("model",),
    ),
    "EmbedResponse": _obj(
        {
            "model": _STR,
            "embeddings": {"type": "array", "items": {"type": "array", "items": _NUM}},
            "total_duration": _INT,
            "load_duration": _INT,
            "prompt_eval_count": _INT,
        },
        ("embeddings",),
    ),
    "EmbeddingsRequest": _obj(
        {"model": _MODEL, "prompt": _STR, "options": _ref("Options"), "keep_alive": _KEEP_ALIVE},
        ("model",),
    ),
    "EmbeddingsResponse": _obj({"embedding": {"type": "array", "items": _NUM}}, ("embedding",)),
    "ModelRequest": _obj(
        {"model": _MODEL, "name": {**_STR, "description": "the older spelling of `model`"}}
    ),
    "ShowRequest": _obj(
        {"model": _MODEL, "name": _STR, "verbose": _BOOL},
    ),
    "PullRequest": _obj({"model": _MODEL, "name": _STR, "insecure": _BOOL, "stream": _BOOL}),
    "CopyRequest": _obj({"source": _MODEL, "destination": _MODEL}, ("source", "destination")),
    "Status": _obj({"status": _STR}),
    "Tags": _obj({"models": {"type": "array", "items": _MODEL_ENTRY}}, ("models",)),
    "Version": _obj({"version": _STR}, ("version",)),
    "ChatCompletionRequest": _obj(
        {
            "model": _MODEL,
            "messages": {"type": "array", "items": {"type": "object"}},
            "stream": _BOOL,
            "max_tokens": {**_INT, "minimum": 1},
            "max_completion_tokens": {**_INT, "minimum": 1},
            "n": {**_INT, "minimum": 1},
            "temperature": _NUM,
            "top_p": _NUM,
            "stop": _STOP,
            "stream_options": {"type": "object"},
            "tools": {"type": "array", "items": {"type": "object"}},
        },
        ("model", "messages"),
    ),
    "CompletionRequest": _obj(
        {
            "model": _MODEL,
            "prompt": {"oneOf": [_STR, {"type": "array"}]},
            "stream": _BOOL,
            "max_tokens": {**_INT, "minimum": 1},
            "n": {**_INT, "minimum": 1},
            "best_of": {**_INT, "minimum": 1},
            "temperature": _NUM,
            "top_p": _NUM,
            "stop": _STOP,
        },
        ("model", "prompt"),
    ),
    "EmbeddingRequest": _obj(
        {
            "model": _MODEL,
            "input": {"oneOf": [_STR, {"type": "array"}]},
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            "dimensions": {**_INT, "minimum": 1},
        },
        ("model", "input"),
    ),
    "OpenAIObject": {"type": "object"},
    "ModelList": _obj(
        {"object": _STR, "data": {"type": "array", "items": _OPENAI_MODEL}}, ("data",)
    ),
    "OpenAIModel": _OPENAI_MODEL,
}

_ERROR_STATUSES = {
    "400": "invalid request (the message names the field)",
    "401": "missing or invalid API key",
    "403": "not allowed: an admin operation without an admin key, or a web origin or host "
    "that is not allowed",
    "404": "model or route not found",
    "408": "the request's body did not arrive in time",
    "413": "request body too large",
    "429": "rate limit or per-key concurrency exceeded (Retry-After)",
    "503": "no healthy engine, or the server is busy (Retry-After)",
}


def _errors(shape: str) -> dict[str, Any]:
    return {code: {"$ref": f"#/components/responses/{shape}{code}"} for code in _ERROR_STATUSES}


def _error_responses() -> Schema:
    return {
        f"{shape}{code}": {
            "description": description,
            "content": {"application/json": {"schema": _ref(shape)}},
        }
        for shape in ("OllamaError", "OpenAIError")
        for code, description in _ERROR_STATUSES.items()
    }


def _json(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(name: str) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _op(
    summary: str,
    *,
    body: str | None = None,
    ok: Schema | None = None,
    shape: str = "OllamaError",
    tags: tuple[str, ...] = ("ollama",),
    stream: bool = False,
    params: list[Schema] | None = None,
) -> Schema:
    responses: Schema = {"200": ok or {"description": "OK"}}
    if stream:
        media = "text/event-stream" if shape == "OpenAIError" else "application/x-ndjson"
        responses["200"].setdefault("content", {})[media] = {
            "schema": {"type": "string", "description": "one JSON object per line/event"}
        }
    responses.update(_errors(shape))
    op: Schema = {"summary": summary, "tags": list(tags), "responses": responses}
    if body is not None:
        op["requestBody"] = _body(body)
    if params:
        op["parameters"] = params
    return op


def _v1(summary: str, body: str, *, stream: bool = True) -> Schema:
    """A /v1 inference operation: the body passes to vLLM, the answer comes back as is."""
    return _op(
        summary,
        body=body,
        ok=_json(_ref("OpenAIObject")),
        shape="OpenAIError",
        tags=("openai",),
        stream=stream,
    )


def _path_param(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
        "description": description,
    }


def _get_head(op: Schema) -> Schema:
    head = {**op, "responses": {"200": {"description": "OK"}, **_errors("OllamaError")}}
    return {"get": op, "head": head}


def document() -> Schema:
    """The OpenAPI document (a fresh dict each call)."""
    v1 = ("openai",)
    health = ("health",)
    paths: Schema = {
        "/": _get_head(_op("Ollama's heartbeat: `Ollama is running`")),
        "/api/version": _get_head(_op("The Ollama version reported", ok=_json(_ref("Version")))),
        "/api/tags": _get_head(_op("Models served, with aliases", ok=_json(_ref("Tags")))),
        "/api/ps": {"get": _op("Models loaded (every served model)", ok=_json(_ref("Tags")))},
        "/api/chat": {
            "post": _op(
                "Chat (NDJSON stream unless stream is false)",
                body="ChatRequest",
                ok=_json(_ref("ChatResponse")),
                stream=True,
            )
        },
        "/api/generate": {
            "post": _op(
                "Completion (NDJSON stream unless stream is false)",
                body="GenerateRequest",
                ok=_json(_ref("GenerateResponse")),
                stream=True,
            )
        },
        "/api/embed": {
            "post": _op("Embeddings", body="EmbedRequest", ok=_json(_ref("EmbedResponse")))
        },
        "/api/embeddings": {
            "post": _op(
                "Embeddings (the older form)",
                body="EmbeddingsRequest",
                ok=_json(_ref("EmbeddingsResponse")),
            )
        },
        "/api/show": {
            "post": _op("A model's details", body="ShowRequest", ok=_json({"type": "object"}))
        },
        "/api/pull": {
            "post": _op(
                "Download a model (admin)",
                body="PullRequest",
                ok=_json(_ref("Status")),
                stream=True,
            )
        },
        "/api/push": {"post": _op("Refused: vllama does not push (admin)", body="ModelRequest")},
        "/api/create": {"post": _op("Refused: no Modelfiles (admin)", body="ModelRequest")},
        "/api/copy": {"post": _op("Add an alias (admin)", body="CopyRequest")},
        "/api/delete": {"delete": _op("Remove an alias or a model (admin)", body="ModelRequest")},
        "/api/blobs/{digest}": {
            "head": _op(
                "Blob exists? (always 404: vllama keeps no blobs) (admin)",
                params=[_path_param("digest", "sha256:<hex>")],
            ),
            "post": _op(
                "Refused: vllama keeps no blobs (admin)",
                params=[_path_param("digest", "sha256:<hex>")],
            ),
        },
        "/v1/chat/completions": {
            "post": _v1("OpenAI chat completions, passed to vLLM", "ChatCompletionRequest")
        },
        "/v1/completions": {"post": _v1("OpenAI completions, passed to vLLM", "CompletionRequest")},
        "/v1/embeddings": {
            "post": _v1("OpenAI embeddings, passed to vLLM", "EmbeddingRequest", stream=False)
        },
        "/v1/models": {
            "get": _op(
                "Models and aliases", ok=_json(_ref("ModelList")), shape="OpenAIError", tags=v1
            )
        },
        "/v1/models/{model}": {
            "get": _op(
                "One model or alias",
                ok=_json(_ref("OpenAIModel")),
                shape="OpenAIError",
                tags=v1,
                params=[_path_param("model", "a model id or alias; may contain `/`")],
            )
        },
        "/health": {"get": _op("The process answers", ok=_json({"type": "object"}), tags=health)},
        "/health/ready": {
            "get": _op(
                "Ready: every model has a healthy engine (503 otherwise); details with a key",
                ok=_json({"type": "object"}),
                tags=health,
            )
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text format)",
                "tags": list(health),
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors("OllamaError"),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vllama",
            "version": __version__,
            "description": "The Ollama API and the OpenAI API in front of vLLM engines. "
            'Errors are `{"error": "..."}` on / and /api, OpenAI\'s error object on /v1.',
        },
        "paths": paths,
        "components": {
            "schemas": json.loads(json.dumps(COMPONENTS)),
            "responses": _error_responses(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        # Keys are off by default; when configured, either form is accepted.
        "security": [{}, {"bearer": []}, {"apiKey": []}],
    }


def rendered() -> str:
    """The document as kept in docs/openapi.json."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


def operations(doc: Schema | None = None) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in the document."""
    doc = doc if doc is not None else document()
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "head", "post", "put", "patch", "delete", "options")
    }


if __name__ == "__main__":
    sys.stdout.write(rendered())
