"""What can go wrong upstream, as exceptions that carry the answer for the client.

Every subclass has `status` (the HTTP status to answer with), `message` (said to the
client, in the path's API shape) and `kind` (the `vllama_upstream_errors_total` label);
`retry_after` (seconds), when set, is sent as a Retry-After header.
"""

from __future__ import annotations


class UpstreamError(Exception):
    status: int = 502
    kind: str = "protocol"
    retry_after: int | None = None

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


class ModelNotFound(UpstreamError):
    status = 404
    kind = "not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.name = name


class NoHealthyEngine(UpstreamError):
    status = 503
    kind = "no_engine"

    def __init__(self, name: str, detail: str | None = None) -> None:
        message = f"no healthy engine serves model '{name}'"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.name = name


class EngineConnectionError(UpstreamError):
    """The engine could not be reached, or the connection broke (kind connect/timeout)."""

    status = 503
    kind = "connect"


class EngineHTTPError(UpstreamError):
    """The engine answered with an error status; status and message are the engine's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, status=status, kind="http_5xx" if status >= 500 else "http_4xx")
