"""A minimal OpenAI-compatible server that answers instantly: the upstream for measuring
what a proxy in front of it costs.

Raw asyncio + httptools (no framework) and prebuilt responses, so its own cost per request
is small; `GET /_stats` reports its CPU seconds so the benchmark can show that cost.
Streams send `--chunks` SSE events, each its own write, then a usage event and [DONE].
With `--break-after N` a stream stops after N content events and the connection closes
without ending the chunked body: an engine that died mid-stream, at an exact point.
With `--interval-ms N` stream events are paced N ms apart, and `GET /_stats` counts the
streams whose client left before the end (`aborted`): a generation that takes time.

    python -m tests.perf.instant_upstream --port 18100 [--chunks 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any, cast

import httptools
import uvloop

MODEL = "vllama-demo"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Responses:
    def __init__(self, chunks: int) -> None:
        created = int(time.time())
        self.models = self._json(
            {
                "object": "list",
                "data": [
                    {
                        "id": MODEL,
                        "object": "model",
                        "created": created,
                        "owned_by": "vllm",
                        "root": "instant",
                        "parent": None,
                        "max_model_len": 512,
                    }
                ],
            }
        )
        usage = {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": 8 + chunks}
        self.chat = self._json(
            {
                "id": "chatcmpl-instant",
                "object": "chat.completion",
                "created": created,
                "model": MODEL,
                "usage": usage,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "hello " * chunks},
                    }
                ],
            }
        )
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )

        def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            body = {
                "id": "chatcmpl-instant",
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return _chunk(b"data: " + json.dumps(body).encode() + b"\n\n")

        self.stream_parts = [head + event({"role": "assistant", "content": ""})]
        self.stream_parts += [event({"content": "hello "}) for _ in range(chunks)]
        self.stream_parts.append(event({}, "stop"))
        last = {
            "id": "chatcmpl-instant",
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "choices": [],
            "usage": usage,
        }
        self.stream_parts.append(
            _chunk(b"data: " + json.dumps(last).encode() + b"\n\n")
            + _chunk(b"data: [DONE]\n\n")
            + b"0\r\n\r\n"
        )
        self.ok_empty = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        self.not_found = self._json({"error": {"message": "not found", "code": 404}}, 404)

    @staticmethod
    def _json(obj: Any, status: int = 200) -> bytes:
        body = json.dumps(obj).encode()
        reason = b"OK" if status == 200 else b"Not Found"
        return (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, reason, len(body), body)
        )


class Protocol(asyncio.Protocol):
    def __init__(
        self,
        responses: Responses,
        stats: dict[str, int],
        break_after: int | None = None,
        interval_s: float = 0.0,
    ) -> None:
        self.break_after = break_after
        self.interval_s = interval_s
        self.pending: list[asyncio.TimerHandle] = []
        self.responses = responses
        self.stats = stats
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def _paced(self, parts: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        for i, part in enumerate(parts):
            self.pending.append(loop.call_later(i * self.interval_s, self._write, part))

    def _write(self, part: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(part)
        self.pending.pop(0)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending:  # the client left before the stream's end
            self.stats["aborted"] += 1
            for handle in self.pending:
                handle.cancel()
            self.pending.clear()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        url, body = self.url, b"".join(self.body)
        self.url, self.body = b"", []
        self.stats["requests"] += 1
        r = self.responses
        if url.startswith(b"/v1/chat/completions"):
            if b'"stream": true' in body or b'"stream":true' in body:
                if self.break_after is not None:
                    for part in r.stream_parts[: 1 + self.break_after]:
                        self.transport.write(part)
                    self.transport.close()  # flushes what was written, never ends the body
                    return
                if self.interval_s:
                    self._paced(r.stream_parts)
                    return
                for part in r.stream_parts:  # one write per event, as an engine streams
                    self.transport.write(part)
            else:
                self.transport.write(r.chat)
        elif url.startswith(b"/v1/models"):
            self.transport.write(r.models)
        elif url.startswith((b"/health", b"/metrics")):
            self.transport.write(r.ok_empty)
        elif url.startswith(b"/_stats"):
            use = resource.getrusage(resource.RUSAGE_SELF)
            self.transport.write(
                Responses._json({**self.stats, "cpu_s": use.ru_utime + use.ru_stime})
            )
        else:
            self.transport.write(r.not_found)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(
    port: int, chunks: int, break_after: int | None = None, interval_s: float = 0.0
) -> None:
    responses = Responses(chunks)
    stats = {"requests": 0, "aborted": 0}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Protocol(responses, stats, break_after, interval_s),
        "127.0.0.1",
        port,
        backlog=4096,
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--break-after", type=int, default=None)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.chunks, args.break_after, args.interval_ms / 1000))


if __name__ == "__main__":
    main()
