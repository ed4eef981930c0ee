"""Streamed answers: `ProxyStream`, a response that notices a client hanging up and,
however it ends (done, engine error, client gone), runs its cleanup (closing the upstream
response is what makes vLLM abort the request); and `UpstreamStream`, which relays the
pool's engine events from a task of its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


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
        # One watcher task and plain asyncio cancellation: an anyio task group (two tasks
        # and cancel scopes) cost a measurable share of a request's CPU
        # (docs/performance-analysis.md).
        task = asyncio.current_task()
        assert task is not None
        state = {"done": False, "gone": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["done"]:  # the client left mid-response: stop the pump
                state["gone"] = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
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
            watcher.cancel()
            with anyio.CancelScope(shield=True):
                await self._chunks.aclose()
                await self._on_close()


END: Any = object()  # UpstreamStream: the upstream stream ended normally


class UpstreamStream:
    """Runs the pool's `stream_events` context in one task of its own.

    Starlette streams the body from another task than the endpoint's, and a client that
    goes away cancels that one; entering and leaving the pool's context in a single task
    keeps its cancel scopes and timeouts valid, and `close` (cancelling it) always ends
    the upstream request.
    """

    def __init__(
        self, events: contextlib.AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]
    ) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=256)  # bounded: backpressure
        self._failed: Exception | None = None  # met by `batch` after events: raised next
        self._task = asyncio.create_task(self._run(events))

    async def _run(
        self, events: contextlib.AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]
    ) -> None:
        try:
            async with events as stream:
                async for event in stream:
                    await self._queue.put(event)
            await self._queue.put(END)
        except Exception as exc:
            await self._queue.put(_Failure(exc))

    async def next(self) -> Any:
        """The next event, `END`, or the upstream's exception raised here."""
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        item = await self._queue.get()
        if isinstance(item, _Failure):
            raise item.exc
        return item

    async def batch(self) -> list[Any]:
        """Every event waiting now (at least one; the last may be `END`).

        Writing a burst of events as one body chunk saves a send per event.
        """
        items = [await self.next()]
        while items[-1] is not END and not self._queue.empty():
            try:
                items.append(await self.next())
            except Exception as exc:  # the events before it still go out first
                self._failed = exc
                break
        return items

    async def close(self) -> None:
        """Idempotent; waits until the pool's context has been left (connection closed)."""
        self._task.cancel()
        await asyncio.wait({self._task})  # a cancelled caller still cancels the producer


class _Failure:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc
