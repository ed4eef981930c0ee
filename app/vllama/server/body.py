"""Request bodies, read whole by the middleware before anything else is spent on them.

`read_body` takes every `http.request` message, bounded in size (`max_body_bytes`, 413,
also for chunked uploads without Content-Length) and in time (`body_timeout_s` from the
end of the headers, 408): a client that sends one byte every few seconds never reaches
the queue, and never holds a slot there.

`Replay` then serves the app: the body once, and afterwards the disconnect that a single
watcher task sees on the real channel. With `cancel_on_disconnect`, a client that leaves
before the answer starts cancels the app's task: a non-streamed request stops its
upstream request (and so the engine's work) too, as streams already do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyError(Exception):
    """The body was refused; `status` and `message` are the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The client disconnected while sending its body."""


def too_large_message(size: int, limit: int) -> str:
    return (
        f"request body too large: {size} bytes, the limit is {limit} (max_body_bytes); "
        "send a smaller request or raise VLLAMA_MAX_BODY_BYTES"
    )


async def read_body(receive: Receive, limit: int, timeout_s: float) -> bytes:
    """The whole body; BodyError (413, 408) or ClientGone."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > limit:
                        raise BodyError(413, too_large_message(size, limit))
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise BodyError(
            408,
            f"request body not received within {timeout_s:g} s (body_timeout_s; {size} bytes "
            "arrived); send the body at once after the headers",
        ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Replay:
    """The app's `receive`: the buffered body, then the client's disconnect."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive
        self._watcher: asyncio.Task[None] | None = None
        self.gone = asyncio.Event()
        self.answered = False  # the answer started: a disconnect no longer cancels
        self.cancelled_app = False
        self._on_gone: list[Callable[[], None]] = []

    def watch(self, task: asyncio.Task[Any] | None) -> None:
        """Start the one consumer of the real channel; cancel `task` if the client leaves
        before the answer started (None: only report the disconnect)."""
        self._watcher = asyncio.ensure_future(self._watch(task))

    async def _watch(self, task: asyncio.Task[Any] | None) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone.set()
        if task is not None and not self.answered and not task.done():
            self.cancelled_app = True
            task.cancel()
        for callback in self._on_gone:
            callback()
        self._on_gone.clear()

    def on_disconnect(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call `callback` when the client disconnects (soon, if it already has), from the
        one watcher this Replay runs: a streamed answer needs no watcher task of its own.
        Returns the function that unregisters it; None when nothing watches the channel
        (`watch` was not called): the caller then watches `receive` itself."""
        if self._watcher is None:
            return None
        if self.gone.is_set():
            asyncio.get_running_loop().call_soon(callback)
            return lambda: None
        self._on_gone.append(callback)

        def unregister() -> None:
            if callback in self._on_gone:
                self._on_gone.remove(callback)

        return unregister

    async def __call__(self) -> Message:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        if self._watcher is None:
            return await self._receive()
        await self.gone.wait()
        return {"type": "http.disconnect"}

    def tracking(self, send: Send) -> Send:
        """`send`, noting when the answer starts (a disconnect then cancels nothing)."""

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.answered = True
            await send(message)

        return tracked

    def close(self) -> None:
        """Stop the watcher (without waiting: the request's task may be ending)."""
        self.answered = True
        if self._watcher is not None:
            self._watcher.cancel()
