"""Run the real façade (uvicorn + the app factory) on a free 127.0.0.1 port, in a thread.

For tests that must signal or kill the façade, run it as a subprocess with
`tests.procs.vllama_serve` instead.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from tests.procs import free_port, http_ok, wait_for


@contextlib.contextmanager
def run_facade(**settings: Any) -> Iterator[str]:
    """Yield the base URL of a façade built from `Settings(**settings)`."""
    from vllama.config import Settings
    from vllama.server.app import create_app
    from vllama.server.http import uvicorn_config

    port = free_port()
    config_settings = Settings(host="127.0.0.1", port=port, **settings)
    app = create_app(config_settings)
    # The same uvicorn configuration (protocol limits and timeouts) as `vllama serve`.
    config = uvicorn_config(app, config_settings, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not thread.is_alive():
            raise RuntimeError("façade did not start: its server thread ended")
        return http_ok(f"{url}/health")

    wait_for(up, "façade up", 30)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(15)
