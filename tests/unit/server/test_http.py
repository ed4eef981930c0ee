"""The façade's HTTP layer (server/http.py) over raw sockets, against the real uvicorn
server the façade runs (tests/facade.py uses the same configuration as `vllama serve`):
header size and count limits (431), header timeout (408; a silent close for a connection
that sent nothing), idle keep-alive timeout, the connection cap (503 + Retry-After),
malformed requests (400), each in the API's error shape; and the memory a client can make
the process hold with unfinished headers (a real `vllama serve` subprocess, its RSS read
from /proc).

No engine is needed: /api/version and /v1/models answer without one.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engines import free_port
from tests.facade import run_facade
from tests.unit.cli.serve_proc import run_serve

pytestmark = pytest.mark.timeout(120)

NO_ENGINE = [{"url": "http://127.0.0.1:9"}]  # nothing listens on the discard port


@contextlib.contextmanager
def facade(**settings: object) -> Iterator[tuple[str, int]]:
    with run_facade(engines=NO_ENGINE, **settings) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def exchange(addr: tuple[str, int], data: bytes, *, wait: float = 10.0) -> tuple[bytes, bool]:
    """Send `data`, read until the server closes (or `wait` passes): (bytes, closed)."""
    with socket.create_connection(addr, timeout=wait) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close mid-send
            sock.sendall(data)
        return read_until_closed(sock, wait)


def read_until_closed(sock: socket.socket, wait: float) -> tuple[bytes, bool]:
    sock.settimeout(wait)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except TimeoutError:
        return out, False
    except ConnectionResetError:  # closed with our unread bytes pending: still closed
        pass
    return out, True


def status_and_body(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def test_huge_header_is_431_in_each_shape() -> None:
    with facade(max_header_bytes=8192) as addr:
        for path, shape in (("/api/version", "ollama"), ("/v1/models", "openai")):
            raw, closed = exchange(
                addr,
                f"GET {path} HTTP/1.1\r\nHost: localhost\r\nX-A: {'a' * 20000}\r\n\r\n".encode(),
            )
            status, body = status_and_body(raw)
            assert status == 431 and closed
            message = body["error"] if shape == "ollama" else body["error"]["message"]  # type: ignore[index]
            assert "max_header_bytes" in str(message)


def test_too_many_headers_is_431() -> None:
    with facade(max_headers=20) as addr:
        fields = "".join(f"X-{i}: 1\r\n" for i in range(30))
        raw, closed = exchange(
            addr, f"GET /api/version HTTP/1.1\r\nHost: localhost\r\n{fields}\r\n".encode()
        )
        status, body = status_and_body(raw)
        assert status == 431 and closed and "max_headers" in str(body["error"])
        # At the limit it is served.
        fields = "".join(f"X-{i}: 1\r\n" for i in range(18))
        raw, _ = exchange(
            addr,
            f"GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{fields}\r\n".encode(),
        )
        assert raw.startswith(b"HTTP/1.1 200")


def test_an_unfinished_huge_header_is_cut_off_early() -> None:
    # 16 MiB of one header line, never finished: refused once the limit is passed, not
    # after the whole thing was buffered.
    with facade(max_header_bytes=65536) as addr, socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nX-A: ")
        sent = 0
        refused = False
        try:
            while sent < 16 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            refused = True
        raw, closed = read_until_closed(sock, 10)
        assert refused or closed
        assert sent < 8 * 1024 * 1024  # cut off long before the end
        if raw:
            assert status_and_body(raw)[0] == 431


def test_headers_that_trickle_in_get_408_and_idle_connections_are_closed() -> None:
    with facade(header_timeout_s=1.0) as addr:
        with socket.create_connection(addr, timeout=10) as sock:
            t0 = time.monotonic()
            sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: loc")
            for _ in range(3):  # a byte every 0.4 s: never a whole request within 1 s
                time.sleep(0.4)
                with contextlib.suppress(OSError):
                    sock.sendall(b"a")
            raw, closed = read_until_closed(sock, 10)
            assert closed and time.monotonic() - t0 < 5
        status, body = status_and_body(raw)
        assert status == 408 and "header_timeout_s" in str(body["error"])
        # A connection that sends nothing is closed without an answer after the timeout.
        t0 = time.monotonic()
        raw, closed = exchange(addr, b"", wait=10)
        assert closed and raw == b"" and 0.9 < time.monotonic() - t0 < 5


def test_idle_keep_alive_connections_are_closed_after_keep_alive_s() -> None:
    with (
        facade(keep_alive_s=1.0, header_timeout_s=30) as addr,
        socket.create_connection(addr) as sock,
    ):
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.settimeout(10)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        rest, closed = read_until_closed(sock, 10)
        assert closed and rest == b"" and 0.9 < time.monotonic() - t0 < 5


def test_connections_above_the_cap_get_503_with_retry_after() -> None:
    with facade(max_connections=2, header_timeout_s=30) as addr:
        held = [socket.create_connection(addr) for _ in range(2)]
        try:
            raw, closed = exchange(addr, b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, body = status_and_body(raw)
            assert status == 503 and closed and b"retry-after: 2" in raw.lower()
            assert "max_connections" in body["error"]["message"]  # type: ignore[index]
        finally:
            for s in held:
                s.close()
        time.sleep(0.2)
        raw, _ = exchange(
            addr, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        assert raw.startswith(b"HTTP/1.1 200")


def test_malformed_request_is_400_json() -> None:
    with facade() as addr:
        raw, closed = exchange(addr, b"NOT HTTP AT ALL\r\n\r\n")
        status, body = status_and_body(raw)
        assert status == 400 and closed and "malformed" in str(body["error"])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_unfinished_huge_headers_do_not_grow_the_process(tmp_path: Path) -> None:
    # Issue 13: 8 connections each sending 16 MiB of one unfinished header line grew the
    # façade by hundreds of MB. Now each is cut off after max_header_bytes (64 KiB).
    with run_serve(["--engine", f"http://127.0.0.1:{free_port()}"], tmp_path) as serve:
        addr = ("127.0.0.1", serve.port)
        before = rss_kib(serve.proc.pid)
        socks = [socket.create_connection(addr, timeout=10) for _ in range(8)]
        try:
            for s in socks:
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
            chunk = b"b" * 262144
            for _ in range(64):  # up to 16 MiB per connection
                live = []
                for s in socks:
                    try:
                        s.sendall(chunk)
                        live.append(s)
                    except OSError:
                        s.close()
                socks = live
                if not socks:
                    break
            time.sleep(0.5)
            grown_mib = (rss_kib(serve.proc.pid) - before) / 1024
        finally:
            for s in socks:
                s.close()
    print(f"unfinished huge headers: RSS grew by {grown_mib:.1f} MiB")
    assert grown_mib < 50, f"RSS grew by {grown_mib:.0f} MiB"
