"""A spinner with elapsed time on a terminal; plain progress lines otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


class LoadProgress:
    def __init__(
        self, label: str, stream: TextIO | None = None, *, plain_every_s: float = 15.0
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.plain_every_s = plain_every_s
        self._frame = 0
        self._last = -1e9

    def update(self, elapsed: float, ready: int, total: int) -> None:
        now = time.monotonic()
        if self.tty:
            if now - self._last < 0.1:
                return
            self._frame = (self._frame + 1) % len(_FRAMES)
            text = (
                f"\r{_FRAMES[self._frame]} {self.label} ({ready}/{total} ready, {_clock(elapsed)})"
            )
            self.stream.write(text + "\x1b[K")
        else:
            if now - self._last < self.plain_every_s:
                return
            self.stream.write(
                f"vllama: {self.label}: {ready}/{total} ready after {_clock(elapsed)}\n"
            )
        self._last = now
        self.stream.flush()

    def done(self, message: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(message + "\n")
        self.stream.flush()
