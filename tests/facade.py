"""Run the real façade (uvicorn + the app factory) on a free 127.0.0.1 port, in a thread.

For tests that must signal or kill the façade, run it as a subprocess with
`vllama serve --engine URL ...` instead.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from tests.engines import free_port, http_ok


@contextlib.contextmanager
def run_facade(**settings: Any) -> Iterator[str]:
    """Yield the base URL of a façade built from `Settings(**settings)`."""
    from vllama.config import Settings
    from vllama.server.app import create_app

    port = free_port()
    app = create_app(Settings(host="127.0.0.1", port=port, **settings))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not http_ok(f"{url}/health"):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("façade did not start")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(15)
