"""Where the demo model lives and how its directory is recognised: what the builder
(engine/demo_model.py), the model store (models/store.py) and `vllama serve --demo` share.
"""

from __future__ import annotations

from pathlib import Path

from vllama.config import Settings

DEMO_MODEL_NAME = "vllama-demo"
MARKER_FILE = "vllama-demo.json"  # written last by the builder: {"name", "fingerprint"}


def default_demo_dir() -> Path:
    return Path.home() / ".cache" / "vllama" / "models" / DEMO_MODEL_NAME


def demo_dir(settings: Settings) -> Path:
    """Where `serve --demo` builds the demo model: next to the hub cache when one is set."""
    if settings.cache_dir is not None:
        return settings.cache_dir / DEMO_MODEL_NAME
    return default_demo_dir()


def is_demo_dir(path: Path) -> bool:
    """A demo model was built at `path` (of this recipe or an older one): the store lists
    and removes it; `serve --demo` rebuilds one of an older recipe."""
    return (path / MARKER_FILE).is_file()
