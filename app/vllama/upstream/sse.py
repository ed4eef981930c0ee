"""Incremental Server-Sent Events decoding: bytes in, as the network splits them; the
`data` of each complete event out, as bytes (JSON parsers take bytes; nothing is decoded
twice). An event (or a line, or a UTF-8 character) may be cut anywhere between two
chunks, so undecoded bytes stay buffered until the event ends."""

from __future__ import annotations


class SSEDecoder:
    """Feed raw chunks; get the `data` payload of each event that completed.

    Lines end with LF, CRLF or CR (the SSE spec allows all three); a blank line ends an
    event; several `data:` lines are joined with LF; comments and other fields are ignored.
    """

    __slots__ = ("_buf", "_data", "_has_data", "_pending_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._has_data = False
        self._pending_cr = False  # the last chunk ended in CR: a following LF belongs to it

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = False
        buf = self._buf + chunk if self._buf else chunk
        events: list[bytes] = []
        if b"\r" not in buf:  # LF only, as engines send: split at once
            if not self._has_data:  # no event under way: whole events first
                *blocks, buf = buf.split(b"\n\n")
                for block in blocks:
                    if block.startswith(b"data: ") and b"\n" not in block:
                        events.append(block[6:])  # one data line: what engines send
                    elif block:
                        for line in block.split(b"\n"):
                            self._line(line, events)
                        self._line(b"", events)
            *lines, self._buf = buf.split(b"\n")
            for line in lines:
                self._line(line, events)
            return events
        start = 0
        n = len(buf)
        while start < n:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, lf if lf >= 0 else n)
            if cr >= 0:
                end, nxt = cr, cr + 1
                if nxt < n and buf[nxt : nxt + 1] == b"\n":
                    nxt += 1
                elif nxt == n:
                    self._pending_cr = True
            elif lf >= 0:
                end, nxt = lf, lf + 1
            else:
                break
            self._line(buf[start:end], events)
            start = nxt
        self._buf = buf[start:]
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._has_data:
                data = self._data
                events.append(data[0] if len(data) == 1 else b"\n".join(data))
            self._data = []
            self._has_data = False
            return
        if line[0] == 0x3A:  # ":" a comment
            return
        field, sep, value = line.partition(b":")
        if field != b"data":
            return
        if sep and value.startswith(b" "):
            value = value[1:]
        self._data.append(value)
        self._has_data = True
