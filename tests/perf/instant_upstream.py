"""A minimal OpenAI-compatible server that answers instantly: the upstream for measuring
what a proxy in front of it costs.

Raw asyncio + httptools (no framework) and prebuilt responses, so its own cost per request
is small; `GET /_stats` reports its CPU seconds so the benchmark can show that cost.
Streams send `--chunks` SSE events, each its own write, then a usage event and [DONE].
With `--break-after N` a stream stops after N content events and the connection closes
without ending the chunked body: an engine that died mid-stream, at an exact point.
With `--interval-ms N` stream events are paced N ms apart (a whole answer comes after
chunks × N ms), and `GET /_stats` counts the streams whose client left before the end
(`aborted`): a generation that takes time.
With `--request-metrics MS` answers carry vLLM's per-request timings (what an engine run
with --enable-per-request-metrics sends), saying the generation took MS. `GET /_stats`
also counts streamed and whole chat answers.

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
FINGERPRINT = "vllm-0.32.0-d507fba1"


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Responses:
    def __init__(self, chunks: int, generation_ms: float | None = None) -> None:
        self.chunks = chunks
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
        usage = {"prompt_tokens": 8, "total_tokens": 8 + chunks, "completion_tokens": chunks}
        # vLLM's per-request timings (--enable-per-request-metrics), when asked to report them.
        metrics = (
            None
            if generation_ms is None
            else {
                "time_to_first_token_ms": 0.05,
                "generation_time_ms": generation_ms,
                "queue_time_ms": 0.01,
                "mean_itl_ms": generation_ms / max(chunks - 1, 1),
                "tokens_per_second": chunks / (generation_ms + 0.05) * 1000,
            }
        )
        # The shapes and key order of vLLM 0.32's answers (compact JSON), so what a proxy
        # spends parsing them is what it spends on a real engine's.
        ident = {
            "id": "chatcmpl-instant-8a41c2f0d6e9",
            "object": "chat.completion",
            "created": created,
            "model": MODEL,
        }
        self.chat = self._json(
            {
                **ident,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "hello " * chunks,
                            "refusal": None,
                            "annotations": None,
                            "audio": None,
                            "function_call": None,
                            "reasoning": None,
                        },
                        "logprobs": None,
                        "finish_reason": "length",
                        "stop_reason": None,
                        "token_ids": None,
                        "routed_experts": None,
                    }
                ],
                "service_tier": None,
                "system_fingerprint": FINGERPRINT,
                "usage": {
                    **usage,
                    "prompt_tokens_details": None,
                    "completion_tokens_details": None,
                },
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "prompt_text": None,
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": metrics,
            }
        )
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        chunk_ident = {**ident, "object": "chat.completion.chunk"}

        def event(body: dict[str, Any]) -> bytes:
            return _chunk(b"data: " + _compact({**chunk_ident, **body}) + b"\n\n")

        def content(text: str, finish: str | None = None) -> dict[str, Any]:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            if finish is not None:
                choice["stop_reason"] = None
            choice["token_ids"] = None
            return {"choices": [choice]}

        first = {
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
            "prompt_token_ids": None,
            "prompt_text": None,
        }
        self.stream_parts = [head + event(first)]
        self.stream_parts += [event(content("hello ")) for _ in range(chunks - 1)]
        self.stream_parts.append(event(content("hello ", "length")))  # the last token
        last: dict[str, Any] = {"choices": [], "usage": usage, "system_fingerprint": FINGERPRINT}
        if metrics is not None:  # vLLM leaves the field out of events when it is None
            last["metrics"] = metrics
        self.stream_parts.append(event(last) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        self.ok_empty = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        self.not_found = self._json({"error": {"message": "not found", "code": 404}}, 404)

    @staticmethod
    def _json(obj: Any, status: int = 200) -> bytes:
        body = _compact(obj)
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
        self.queued: list[bytes] = []  # paced stream parts not written yet
        self.timer: asyncio.TimerHandle | None = None
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
        # Each write schedules the next: timers set all at once (i × interval) can fire out
        # of order under uvloop (millisecond rounding), which sent a stream's end before
        # its middle and broke the next response on the connection.
        self.queued = list(parts)
        self._write()

    def _paced_whole(self, answer: bytes, chunks: int) -> None:
        self.queued = [answer]
        self.timer = asyncio.get_running_loop().call_later(self.interval_s * chunks, self._write)

    def _write(self) -> None:
        self.timer = None
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(self.queued.pop(0))
        if self.queued:
            self.timer = asyncio.get_running_loop().call_later(self.interval_s, self._write)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.queued:  # the client left before the stream's end
            self.stats["aborted"] += 1
            if self.timer is not None:
                self.timer.cancel()
            self.queued.clear()

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
                self.stats["streamed"] += 1
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
                self.stats["whole"] += 1
                if self.interval_s:  # a paced generation answers whole at its end
                    self._paced_whole(r.chat, r.chunks)
                    return
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
    port: int,
    chunks: int,
    break_after: int | None = None,
    interval_s: float = 0.0,
    generation_ms: float | None = None,
) -> None:
    responses = Responses(chunks, generation_ms)
    stats = {"requests": 0, "aborted": 0, "streamed": 0, "whole": 0}
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
    parser.add_argument(
        "--request-metrics",
        type=float,
        default=None,
        metavar="GENERATION_MS",
        help="answer with vLLM's per-request timings, this generation time",
    )
    args = parser.parse_args()
    uvloop.run(
        serve(
            args.port,
            args.chunks,
            args.break_after,
            args.interval_ms / 1000,
            args.request_metrics,
        )
    )


if __name__ == "__main__":
    main()
