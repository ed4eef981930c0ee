"""vllama: an Ollama + OpenAI API façade in front of vLLM engines."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vllama")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
