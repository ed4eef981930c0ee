"""Pure translation between the Ollama API and vLLM's OpenAI API (no I/O, no framework)."""

from vllama.translate.errors import TranslationError
from vllama.translate.types import ModelTraits, Timings, UpstreamCall

__all__ = ["ModelTraits", "Timings", "TranslationError", "UpstreamCall"]
