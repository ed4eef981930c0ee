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


class PullProgress:
    """`vllama pull`'s view of the store's Ollama-style events: one updating line per file
    on a terminal, a line per file (and every `plain_every_s` while it lasts) otherwise."""

    def __init__(self, stream: TextIO | None = None, *, plain_every_s: float = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.plain_every_s = plain_every_s
        self._status = ""
        self._last = -1e9
        self._finished: set[str] = set()

    def __call__(self, event: dict[str, object]) -> None:
        status = str(event.get("status", ""))
        total, done = event.get("total"), event.get("completed")
        if not isinstance(total, int) or not isinstance(done, int):
            self._line(status, final=True)
            return
        if status in self._finished:
            return  # its 100% line is out already
        pct = f"{100 * done / total:5.1f}%" if total else "  100%"
        text = f"{status}: {pct} of {_size(total)}"
        finished = done >= total
        if finished:
            self._finished.add(status)
        now = time.monotonic()
        if (
            status != self._status
            or finished
            or now - self._last >= (0.1 if self.tty else self.plain_every_s)
        ):
            self._line(text, final=finished)
            self._last = now
        self._status = status

    def _line(self, text: str, *, final: bool) -> None:
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K" + ("\n" if final else ""))
        elif final or text:
            self.stream.write(text + "\n")
        self.stream.flush()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


class Spinner:
    """A spinner with the elapsed time on a terminal while something blocks (a model
    loading, the first token coming); nothing at all when the stream is not a terminal."""

    def __init__(self, label: str = "", stream: TextIO | None = None) -> None:
        import threading

        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.stream.isatty():
            self._thread = threading.Thread(target=self._draw, name="spinner", daemon=True)
            self._thread.start()

    def _draw(self) -> None:
        start = time.monotonic()
        frame = 0
        # Quiet for the first moments: a quick answer shows no spinner at all.
        while not self._stop.wait(0.1):
            elapsed = time.monotonic() - start
            if elapsed < 0.3:
                continue
            frame = (frame + 1) % len(_FRAMES)
            label = f"{self.label} " if self.label else ""
            self.stream.write(f"\r{_FRAMES[frame]} {label}({_clock(elapsed)})\x1b[K")
            self.stream.flush()

    def stop(self) -> None:
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self.stream.write("\r\x1b[K")
        self.stream.flush()

    def __enter__(self) -> Spinner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
