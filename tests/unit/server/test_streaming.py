"""ProxyStream: a client that hangs up stops the pump and the upstream is closed; a stream
that ends normally closes it too; a cancel from outside (server shutdown) is not swallowed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from vllama.server.streaming import ProxyStream


class Upstream:
    def __init__(self, n: int | None) -> None:
        self.n = n  # None: endless
        self.closed = False
        self.generator_closed = False

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        i = 0
        try:
            while self.n is None or i < self.n:
                yield b"chunk %d\n" % i
                i += 1
                await asyncio.sleep(0.001)
        finally:
            self.generator_closed = True

    async def close(self) -> None:
        self.closed = True


def response(up: Upstream) -> ProxyStream:
    return ProxyStream(
        up.chunks(), status_code=200, headers={"Content-Type": "text/plain"}, on_close=up.close
    )


def client(hang_up_after: int | None = None) -> tuple[list[dict[str, Any]], Any, Any]:
    """(what was sent, receive, send) of a client that hangs up after that many messages,
    or never."""
    sent: list[dict[str, Any]] = []
    hang_up = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == hang_up_after:
            hang_up.set()

    return sent, receive, send


async def test_a_client_hanging_up_stops_the_pump_and_closes_the_upstream() -> None:
    up = Upstream(None)
    sent, receive, send = client(hang_up_after=4)  # the start and three chunks, then gone
    await asyncio.wait_for(response(up)({"type": "http"}, receive, send), 5)
    assert up.closed and up.generator_closed
    assert sent[0]["type"] == "http.response.start"
    assert all(m.get("more_body") for m in sent[1:]), "no normal end after a hang-up"
    assert len(sent) < 50


async def test_a_finished_stream_ends_the_body_and_closes_the_upstream() -> None:
    up = Upstream(3)
    sent, receive, send = client()
    await asyncio.wait_for(response(up)({"type": "http"}, receive, send), 5)
    assert [m.get("body") for m in sent[1:]] == [b"chunk 0\n", b"chunk 1\n", b"chunk 2\n", b""]
    assert sent[-1]["more_body"] is False
    assert up.closed and up.generator_closed
    await asyncio.sleep(0)
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()], "watcher left"


async def test_a_cancel_from_outside_is_not_swallowed() -> None:
    up = Upstream(None)
    _, receive, send = client()
    task = asyncio.create_task(response(up)({"type": "http"}, receive, send))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert up.closed and up.generator_closed


async def test_behind_the_middleware_s_replay_no_watcher_task_of_its_own() -> None:
    # The middleware's Replay already watches the client; ProxyStream registers with it
    # instead of starting a second task per streamed request.
    from vllama.server.body import Replay

    up = Upstream(None)
    sent: list[dict[str, Any]] = []
    hang_up = asyncio.Event()
    tasks_while_streaming: list[int] = []

    async def channel() -> dict[str, Any]:
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        tasks_while_streaming.append(len(asyncio.all_tasks()))
        if len(sent) == 4:
            hang_up.set()

    replay = Replay(b"{}", channel)
    replay.watch(None)
    assert (await replay())["type"] == "http.request"  # the body, once
    before = len(asyncio.all_tasks())  # this test's task and the Replay's watcher among them
    async with asyncio.timeout(5):  # in this task: wait_for would add one
        await response(up)({"type": "http"}, replay, send)
    assert up.closed and up.generator_closed
    assert all(m.get("more_body") for m in sent[1:]) and len(sent) < 50
    assert max(tasks_while_streaming) == before  # no task more while streaming
    replay.close()


async def test_replay_reports_a_disconnect_to_registered_callbacks_once() -> None:
    from vllama.server.body import Replay

    hang_up = asyncio.Event()

    async def channel() -> dict[str, Any]:
        await hang_up.wait()
        return {"type": "http.disconnect"}

    unwatched = Replay(b"", channel)
    assert unwatched.on_disconnect(lambda: None) is None  # nothing watches: caller's job
    replay = Replay(b"", channel)
    replay.watch(None)
    calls: list[str] = []
    replay.on_disconnect(lambda: calls.append("kept"))
    unregister = replay.on_disconnect(lambda: calls.append("dropped"))
    assert unregister is not None
    unregister()
    hang_up.set()
    await asyncio.sleep(0.01)
    assert calls == ["kept"]
    replay.on_disconnect(lambda: calls.append("late"))  # already gone: called soon
    await asyncio.sleep(0)
    assert calls == ["kept", "late"]
    replay.close()
