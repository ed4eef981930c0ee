"""Streamed answers: `ProxyStream`, a response that notices a client hanging up and,
however it ends (done, engine error, client gone), runs its cleanup (closing the upstream
response is what makes vLLM abort the request)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from vllama.server.body import Replay


class ProxyStream(Response):
    """Streams upstream chunks to the client and, however it ends (done, engine error,
    client gone), closes the upstream response: closing is what makes vLLM abort."""

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        *,
        status_code: int,
        headers: dict[str, str],
        on_close: Callable[[], Awaitable[None]],
    ) -> None:
        # Not Response.__init__: it would set content-length for an empty body.
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)
        self._chunks = chunks
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Plain asyncio cancellation and no task of its own where the middleware already
        # watches the client (Replay): an anyio task group (two tasks and cancel scopes)
        # cost a measurable share of a request's CPU (docs/performance-analysis.md).
        task = asyncio.current_task()
        assert task is not None
        state = {"done": False, "gone": False}

        def client_gone() -> None:
            if not state["done"]:  # the client left mid-response: stop the pump
                state["gone"] = True
                task.cancel()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            client_gone()

        unregister = receive.on_disconnect(client_gone) if isinstance(receive, Replay) else None
        watcher = asyncio.ensure_future(watch()) if unregister is None else None
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self._chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            task.uncancel()  # our own cancel: the client went away, nothing is wrong here
        finally:
            state["done"] = True
            if watcher is not None:
                watcher.cancel()
            if unregister is not None:
                unregister()
            if task.cancelling():  # cancelled from outside: the cleanup must still run whole
                with anyio.CancelScope(shield=True):
                    await self._close()
            else:  # the cleanup does not wait on the network: nothing to shield from
                await self._close()

    async def _close(self) -> None:
        await self._chunks.aclose()
        await self._on_close()
