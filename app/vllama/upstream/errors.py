"""What can go wrong upstream, as exceptions that carry the answer for the client.

Every subclass has `status` (the HTTP status to answer with), `message` (said to the
client, in the path's API shape) and `kind` (the `vllama_upstream_errors_total` label).
"""

from __future__ import annotations

import re


class UpstreamError(Exception):
    status: int = 502
    kind: str = "protocol"
    # Seconds a client should wait before trying again (a `Retry-After` header), if any.
    retry_after: int | None = None
    param: str | None = None  # the request field an engine's validation error names

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        kind: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind
        if retry_after is not None:
            self.retry_after = retry_after

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None


class ModelNotFound(UpstreamError):
    status = 404
    kind = "not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.name = name


class NoHealthyEngine(UpstreamError):
    status = 503
    kind = "no_engine"
    retry_after = 2

    def __init__(
        self, name: str, detail: str | None = None, *, retry_after: int | None = None
    ) -> None:
        message = f"no healthy engine serves model '{name}'"
        super().__init__(f"{message}: {detail}" if detail else message, retry_after=retry_after)
        self.name = name


class EngineConnectionError(UpstreamError):
    """The engine could not be reached, or the connection broke (kind connect/timeout)."""

    status = 503
    kind = "connect"
    retry_after = 2


class ModelTooLarge(UpstreamError):
    """An on-demand model needs more memory than a device's whole budget: it never fits."""

    status = 507  # Insufficient Storage: retrying does not help
    kind = "memory"


class NotEnoughMemory(UpstreamError):
    """An on-demand model would fit, but busy engines hold the memory it needs."""

    status = 503
    kind = "memory"
    retry_after = 10


class EngineLoadFailed(UpstreamError):
    """An on-demand engine exited or timed out while loading (its log says why)."""

    status = 500
    kind = "load"


class EngineHTTPError(UpstreamError):
    """The engine answered with an error status; the message is safe_engine_message's."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message, status=status, kind="http_5xx" if status >= 500 else "http_4xx")
        self.param = param
        if status == 503:
            self.retry_after = 2


# What an engine's error text may hold that a client must not see: tracebacks, file
# paths, Python reprs of validation errors (they echo the input and internals).
_UNSAFE_TEXT = re.compile(
    r"Traceback|\bFile \"|site-packages|\.py\b|[\r\n]|(?:^|[\s'\"(=:])(?:/[\w.@+-]+){2,}"
)
# A pydantic error as vLLM renders it: "{'type': ..., 'loc': ('body', 'seed'), 'msg': ...}".
_PYDANTIC = re.compile(r"'loc': \(?'?([^)']*(?:', '[^)']*)*)'?\)?,? 'msg': '([^']{1,200})'")
MAX_ENGINE_MESSAGE = 500


def safe_engine_message(status: int, text: str) -> tuple[str, str | None]:
    """(message, param) for a client, from an engine's error text (which is logged whole).

    5xx: a fixed message (the engine's text is for the operator). 4xx: the engine's
    message when it is one short line without paths or tracebacks (vLLM's validation
    messages are: "max_tokens=... cannot be greater than max_model_len=..."); a pydantic
    error is reduced to its field and reason; anything else to a fixed message.
    """
    if status >= 500:
        return (
            f"the model's engine failed on this request (HTTP {status}); retry, or tell the "
            "operator if it persists (the server log has the details)",
            None,
        )
    found = _PYDANTIC.search(text)
    if found is not None:
        parts = [p for p in re.split(r"'?, '?", found.group(1)) if p and p != "body"]
        field = ".".join(parts).removeprefix("body.")
        if field and not _UNSAFE_TEXT.search(field + found.group(2)):
            return f"invalid field '{field}': {found.group(2)}", field
    text = text.strip()
    if text and len(text) <= MAX_ENGINE_MESSAGE and not _UNSAFE_TEXT.search(text):
        return text, _param_of(text)
    return f"the model's engine refused the request (HTTP {status}); check its fields", None


def _param_of(text: str) -> str | None:
    found = re.search(r"\(parameter=([A-Za-z_][\w.]{0,63})", text)
    return found.group(1) if found else None
