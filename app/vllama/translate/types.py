"""Plain data shared by the translators and the routes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class UpstreamCall:
    """What to send to the engine: `path` under its base URL, the JSON `body`, streamed or not."""

    path: str
    body: dict[str, Any]
    stream: bool


@dataclass(frozen=True)
class ModelTraits:
    """What the translators need to know about the target model (from the pool's card)."""

    max_model_len: int | None = None
    capabilities: frozenset[str] = field(default_factory=frozenset)
    # The façade's limit on one image's pixels (settings.max_image_pixels); None: none.
    max_image_pixels: int | None = None


@dataclass(frozen=True)
class Timings:
    """Durations in nanoseconds, measured by the route (translate never reads a clock)."""

    total_ns: int = 0
    load_ns: int = 0
    prompt_eval_ns: int = 0
    eval_ns: int = 0


class ModelCard(Protocol):
    """The pool's view of a served model (structurally `upstream.pool.ServedModel`)."""

    @property
    def id(self) -> str: ...
    @property
    def max_model_len(self) -> int | None: ...
    @property
    def root(self) -> str | None: ...
    @property
    def created(self) -> int: ...
    @property
    def capabilities(self) -> frozenset[str]: ...


class ModelFacts(Protocol):
    """What is known about a model's files (structurally `models.info.ModelFiles`)."""

    @property
    def config(self) -> Mapping[str, Any] | None: ...
    @property
    def generation_config(self) -> Mapping[str, Any] | None: ...
    @property
    def chat_template(self) -> str | None: ...
    @property
    def size_bytes(self) -> int | None: ...
    @property
    def parameter_count(self) -> int | None: ...
    @property
    def weight_dtype(self) -> str | None: ...
    @property
    def modified_unix(self) -> float | None: ...
