"""The one error the translators raise: the client sent something we cannot map (→ 400)."""

from __future__ import annotations


class TranslationError(ValueError):
    """`message` is what the client sees; `field` names the offending field as Ollama words it."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
