"""Ollama requests → the OpenAI-style call vLLM understands (`UpstreamCall`)."""

from __future__ import annotations

import json
from typing import Any

from vllama.translate.errors import TranslationError
from vllama.translate.fields import (
    keep_alive_seconds,
    model_name,
    opt_bool,
    opt_int,
    opt_list,
    opt_str,
    require_object,
)
from vllama.translate.images import image_part
from vllama.translate.options import max_tokens, parse_options, sampling_params
from vllama.translate.types import ModelTraits, UpstreamCall

# Without a configured max_model_len, completions still need an explicit cap (vLLM's
# default is 16 tokens); vLLM clamps any cap to the room left in the context.
_FALLBACK_MAX_TOKENS = 4096
_THINK_LEVELS = ("low", "medium", "high", "max")
_ROLES = ("system", "user", "assistant", "tool")


# --- shared pieces ------------------------------------------------------------------------


def _images(raw: Any, field: str, model: ModelTraits) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise TranslationError(f'"{field}" must be an array of base64 strings', field)
    return [image_part(img, f"{field}[{i}]", model.max_image_pixels) for i, img in enumerate(raw)]


def _content(text: str, images: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return parts + images


def response_format(raw: Any) -> dict[str, Any] | None:
    """`format: "json"` → json_object; a JSON schema → json_schema (never guided_json)."""
    if raw is None or raw == "":
        return None
    if raw == "json":
        return {"type": "json_object"}
    if isinstance(raw, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": raw}}
    raise TranslationError('"format" must be "json" or a JSON schema object', "format")


def thinking_fields(body: dict[str, Any], model: ModelTraits) -> dict[str, Any]:
    """`think` → chat_template_kwargs.enable_thinking (+ reasoning_effort for a level).

    As Ollama (server/routes.go): thinking asked of a model that cannot think (here: its
    engine has no reasoning parser) is a 400; `think: false` is accepted by every model.
    Omitted, the engine's default applies (its --default-chat-template-kwargs, else the
    chat template's).
    """
    raw = body.get("think")
    if raw is None:
        return {}
    if not isinstance(raw, bool) and not (isinstance(raw, str) and raw in _THINK_LEVELS):
        raise TranslationError(
            'invalid think value: use true, false, "low", "medium", "high" or "max"', "think"
        )
    if raw is False:
        return {"chat_template_kwargs": {"enable_thinking": False}}
    if "thinking" not in model.capabilities:
        raise TranslationError(
            f'"{model_name(body)}" does not support thinking: its engine has no reasoning '
            "parser (start vLLM with --reasoning-parser), or send think: false",
            "think",
        )
    if raw is True:
        return {"chat_template_kwargs": {"enable_thinking": True}}
    return {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": raw}


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    return parse_options(body.get("options"))


def is_unload(body: dict[str, Any]) -> bool:
    """keep_alive 0 on an empty request: Ollama's way to unload a model."""
    return keep_alive_seconds(body) == 0


# --- /api/chat ----------------------------------------------------------------------------


def _tool_call_out(call: Any, field: str, index: int) -> dict[str, Any]:
    call = require_object(call, field)
    fn = require_object(call.get("function"), f"{field}.function")
    name = opt_str(fn, "name", f"{field}.function.name") or ""
    args = fn.get("arguments", {})
    if isinstance(args, str):  # already a JSON string: pass on as is
        arguments = args
    elif isinstance(args, dict):
        arguments = json.dumps(args, ensure_ascii=False)
    else:
        raise TranslationError(
            f'"{field}.function.arguments" must be an object', f"{field}.function.arguments"
        )
    call_id = opt_str(call, "id", f"{field}.id") or f"call_{index}"
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tools(raw: Any) -> list[dict[str, Any]]:
    tools = opt_list({"tools": raw}, "tools") or []
    out = []
    for i, tool in enumerate(tools):
        tool = require_object(tool, f"tools[{i}]")
        require_object(tool.get("function"), f"tools[{i}].function")
        out.append({"type": tool.get("type") or "function", "function": tool["function"]})
    return out


class _PendingCalls:
    """The calls of the last assistant message not yet answered by a tool message.

    Ollama clients often send tool results without the call's id (ollama-python 0.6 drops
    `id` and `tool_call_id`; LangChain's results reach the façade that way): a result is
    paired with the first unanswered call of its `tool_name`, else with the first unanswered
    call, so that templates and engines that match results to calls by id see the right one.
    """

    def __init__(self) -> None:
        self._calls: list[tuple[str, str]] = []  # (name, id), in the order they were made

    def reset(self, calls: list[dict[str, Any]]) -> None:
        self._calls = [(c["function"]["name"], c["id"]) for c in calls]

    def answer(self, call_id: str | None, name: str | None) -> str | None:
        for pos, (call_name, known_id) in enumerate(self._calls):
            if (call_id and known_id == call_id) or (
                not call_id and (not name or call_name == name)
            ):
                del self._calls[pos]
                return known_id
        return call_id


def chat_messages(raw: Any, model: ModelTraits | None = None) -> list[dict[str, Any]]:
    messages = opt_list({"messages": raw}, "messages") or []
    model = model or ModelTraits()
    out: list[dict[str, Any]] = []
    pending = _PendingCalls()
    n_calls = 0
    for i, msg in enumerate(messages):
        field = f"messages[{i}]"
        msg = require_object(msg, field)
        role = (opt_str(msg, "role", f"{field}.role") or "").lower()
        if role not in _ROLES:
            raise TranslationError(
                f'"{field}.role" must be one of system, user, assistant, tool', f"{field}.role"
            )
        text = opt_str(msg, "content", f"{field}.content") or ""
        item: dict[str, Any] = {
            "role": role,
            "content": _content(text, _images(msg.get("images"), f"{field}.images", model)),
        }
        calls = opt_list(msg, "tool_calls", f"{field}.tool_calls")
        if role == "assistant" and calls:
            item["tool_calls"] = []
            for j, call in enumerate(calls):
                item["tool_calls"].append(_tool_call_out(call, f"{field}.tool_calls[{j}]", n_calls))
                n_calls += 1
            pending.reset(item["tool_calls"])
        if role == "tool":
            name = opt_str(msg, "tool_name", f"{field}.tool_name")
            call_id = opt_str(msg, "tool_call_id", f"{field}.tool_call_id")
            if name:
                item["name"] = name
            item["tool_call_id"] = pending.answer(call_id, name) or f"call_{n_calls}"
        out.append(item)
    return out


def chat_request(body: Any, model: ModelTraits) -> UpstreamCall:
    """POST /api/chat → /v1/chat/completions (always streamed upstream, usage included)."""
    body = require_object(body)
    model_name(body)
    options = _sampling(body)
    keep_alive_seconds(body)  # accepted (vLLM keeps models loaded); only its type is checked
    opt_bool(body, "stream")
    out: dict[str, Any] = {"messages": chat_messages(body.get("messages"), model)}
    out.update(sampling_params(options))
    if (n := max_tokens(options)) is not None:
        out["max_tokens"] = n
    if (fmt := response_format(body.get("format"))) is not None:
        out["response_format"] = fmt
    out.update(thinking_fields(body, model))
    tools = _tools(body.get("tools"))
    if tools:
        if "tools" not in model.capabilities:
            # As Ollama (server/routes.go): tools offered to a model that cannot call them
            # are a 400, so agents learn it at once instead of getting the call as text.
            raise TranslationError(
                f'"{model_name(body)}" does not support tools: its engine was not started '
                "with --enable-auto-tool-choice and a --tool-call-parser",
                "tools",
            )
        out["tools"] = tools
    out["stream"] = True
    out["stream_options"] = {"include_usage": True}
    return UpstreamCall("/v1/chat/completions", out, True)


def chat_is_load(body: dict[str, Any]) -> bool:
    return not body.get("messages")


# --- /api/generate ------------------------------------------------------------------------


def generate_request(body: Any, model: ModelTraits) -> UpstreamCall:
    """POST /api/generate → chat completions (templated) or completions (raw or suffix)."""
    body = require_object(body)
    model_name(body)
    options = _sampling(body)
    keep_alive_seconds(body)
    opt_bool(body, "stream")
    prompt = opt_str(body, "prompt") or ""
    system = opt_str(body, "system")
    suffix = opt_str(body, "suffix")
    raw = bool(opt_bool(body, "raw"))
    opt_str(body, "template")  # a Go template cannot be applied by vLLM: accepted, ignored
    opt_list(body, "context")  # deprecated conversational memory: tolerated, ignored
    images = _images(body.get("images"), "images", model)
    params = sampling_params(options)
    fmt = response_format(body.get("format"))
    if raw or suffix:
        if raw and (system or body.get("template")):
            raise TranslationError("raw mode does not support template, system, or context", "raw")
        if images:
            raise TranslationError(
                "images need the chat template: send them without raw or suffix", "images"
            )
        n = max_tokens(options) or model.max_model_len or _FALLBACK_MAX_TOKENS
        out: dict[str, Any] = {"prompt": prompt, "max_tokens": n, **params}
        if suffix:
            out["suffix"] = suffix
        if fmt is not None:
            out["response_format"] = fmt
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
        return UpstreamCall("/v1/completions", out, True)
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": _content(prompt, images)})
    out = {"messages": messages, **params}
    if (limit := max_tokens(options)) is not None:
        out["max_tokens"] = limit
    if fmt is not None:
        out["response_format"] = fmt
    out.update(thinking_fields(body, model))
    out["stream"] = True
    out["stream_options"] = {"include_usage": True}
    return UpstreamCall("/v1/chat/completions", out, True)


def generate_is_load(body: dict[str, Any]) -> bool:
    return not body.get("prompt") and not body.get("images") and not body.get("suffix")


# --- embeddings ---------------------------------------------------------------------------


def embed_inputs(body: Any) -> list[str]:
    """`input` of POST /api/embed: a string or an array of strings."""
    body = require_object(body)
    raw = body.get("input")
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw] if raw else []
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return list(raw)
    raise TranslationError("invalid input type: use a string or an array of strings", "input")


def embed_request(body: Any) -> UpstreamCall:
    """POST /api/embed → /v1/embeddings.

    truncate (default true) → truncate_prompt_tokens -1 (cut to the model's length);
    truncate false → vLLM answers 400 when an input is too long, as Ollama does.
    """
    body = require_object(body)
    model_name(body)
    inputs = embed_inputs(body)
    parse_options(body.get("options"))
    keep_alive_seconds(body)
    out: dict[str, Any] = {"input": inputs, "encoding_format": "float"}
    if opt_bool(body, "truncate") is not False:
        out["truncate_prompt_tokens"] = -1
    dims = opt_int(body, "dimensions")
    if dims is not None:
        if dims <= 0:
            raise TranslationError('"dimensions" must be a positive integer', "dimensions")
        out["dimensions"] = dims
    return UpstreamCall("/v1/embeddings", out, False)


def embeddings_request(body: Any) -> UpstreamCall:
    """Legacy POST /api/embeddings: one `prompt` → one `embedding`."""
    body = require_object(body)
    model_name(body)
    prompt = opt_str(body, "prompt") or ""
    parse_options(body.get("options"))
    keep_alive_seconds(body)
    return UpstreamCall(
        "/v1/embeddings",
        {"input": [prompt], "encoding_format": "float", "truncate_prompt_tokens": -1},
        False,
    )
