"""A scripted upstream that misbehaves on purpose: a small asyncio HTTP/1.1 server that
speaks just enough of vLLM's API (/health, /v1/models, chat JSON and SSE) and drops
connections on a schedule, or hangs.

`drop_reused=True` reproduces the keep-alive race exactly: every request that arrives on
a connection that already served one is read and then met with a closed socket, as when
vLLM closes an idle connection at the moment the client reuses it (the client sees
aiohttp's ServerDisconnectedError; the request never reached the engine's app).
`hang=True` accepts chat requests and never answers (a hung engine); `stall_stream=True`
starts a stream (headers and one event) and then goes silent. Discovery's own requests
(the kind probe, the capability probes with max_tokens 0 or 1) are always answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass

MODEL = "vllama-demo"


@dataclass
class Script:
    drop_reused: bool = False
    hang: bool = False
    stall_stream: bool = False


@dataclass
class Counts:
    connections: int = 0
    answered: int = 0
    dropped: int = 0
    hung: int = 0
    abandoned: int = 0  # hung requests whose client (the façade) closed the connection


def _response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %d OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        content_type,
        len(body),
        body,
    )


def _chat(stream: bool, model: str = MODEL) -> bytes:
    if not stream:
        body = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "ok"},
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        return _response(200, json.dumps(body).encode())
    events = [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}
            ],
        },
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        },
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        },
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    body += b"data: [DONE]\n\n"
    return _response(200, body, b"text/event-stream")


def _models(model: str) -> bytes:
    card = {"id": model, "object": "model", "created": 1, "root": "/m", "max_model_len": 512}
    return json.dumps({"object": "list", "data": [card]}).encode()


class ScriptedEngine:
    def __init__(self, script: Script, model: str = MODEL) -> None:
        self.script = script
        self.model = model
        self.counts = Counts()
        self.last_request: dict[str, object] | None = None  # the last body it was sent
        self.last_raw: bytes | None = None  # and its bytes, as they came
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Every connection still open (keep-alive, hung, stalled) ends here, so no task is
        # left pending and no socket unclosed when the loop goes.
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts.connections += 1
        this = asyncio.current_task()
        assert this is not None
        self._connections.add(this)  # type: ignore[arg-type]
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                if served and self.script.drop_reused and path != "/health":
                    self.counts.dropped += 1
                    writer.transport.abort()  # the race: closed under the reused connection
                    return
                served += 1
                if path == "/health":
                    writer.write(_response(200, b""))
                elif path == "/v1/models":
                    writer.write(_response(200, _models(self.model)))
                elif path.startswith("/v1/") and method == "POST":
                    request = json.loads(body or b"{}")
                    if request:
                        self.last_request = request
                        self.last_raw = body
                    if request == {}:  # discovery's probe: a generating engine refuses it
                        writer.write(_response(400, b'{"error": {"message": "bad", "code": 400}}'))
                    elif request.get("max_tokens") == 0:  # a capability probe: refused, as vLLM
                        err = b'{"error": {"message": "max_tokens must be at least 1, got 0.", "code": 400}}'
                        writer.write(_response(400, err))
                    elif request.get("max_tokens") == 1:  # the thinking probe: one token
                        writer.write(_chat(False, self.model))
                    elif self.script.stall_stream and request.get("stream"):
                        self.counts.hung += 1
                        head, _, rest = _chat(True).partition(b"\r\n\r\n")
                        first = rest.split(b"\n\n", 1)[0] + b"\n\n"
                        writer.write(
                            head.replace(b"content-length", b"x-len") + b"\r\n"
                            b"transfer-encoding: chunked\r\n\r\n"
                            + b"%x\r\n%s\r\n"
                            % (len(first), first)
                        )
                        await writer.drain()
                        await reader.read()  # silent until the client closes the connection
                        self.counts.abandoned += 1
                        return
                    elif self.script.hang:
                        self.counts.hung += 1
                        await reader.read()  # until the client closes the connection
                        self.counts.abandoned += 1
                        return
                    else:
                        self.counts.answered += 1
                        writer.write(_chat(bool(request.get("stream")), self.model))
                else:
                    writer.write(_response(404, b'{"error": "not found"}'))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._connections.discard(this)  # type: ignore[arg-type]


@contextlib.contextmanager
def scripted_engine_thread(script: Script, model: str = MODEL) -> Iterator[ScriptedEngine]:
    """A ScriptedEngine on an event loop of its own thread, for synchronous tests."""
    loop = asyncio.new_event_loop()
    engine = ScriptedEngine(script, model)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(engine.start(), loop).result(10)
    try:
        yield engine
    finally:
        asyncio.run_coroutine_threadsafe(engine.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
