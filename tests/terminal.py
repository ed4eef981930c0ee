"""A command in a pseudo-terminal, for what a program does only on a terminal (progress
bars, an interactive prompt, the human log format): what it prints, and typing into it."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


class Terminal:
    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        self.controller, terminal = pty.openpty()
        self.proc = subprocess.Popen(
            list(argv), stdin=terminal, stdout=terminal, stderr=terminal, env=dict(env), cwd=cwd
        )
        os.close(terminal)
        self.output = ""

    def _read(self) -> bool:
        """One read of what is there; False once the program closed the terminal."""
        try:
            chunk = os.read(self.controller, 65536)
        except OSError:  # EIO: the program closed the terminal
            chunk = b""
        self.output += chunk.decode(errors="replace")
        return bool(chunk)

    def read_until(self, text: str, timeout: float) -> str:
        """What is printed from now until `text` (asserts it comes within `timeout` s)."""
        deadline = time.monotonic() + timeout
        start = len(self.output)
        while text not in self.output[start:]:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not printed; got:\n{self.output[-3000:]}"
            ready, _, _ = select.select([self.controller], [], [], min(left, 1.0))
            if ready and not self._read():
                assert text in self.output[start:], self.output[-3000:]
                break
        return self.output[start:]

    def read_to_end(self, timeout: float) -> str:
        """Everything printed until the program closes the terminal."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.controller], [], [], 1.0)
            if ready and not self._read():
                return self.output
        raise AssertionError(f"still printing after {timeout}s:\n{self.output[-3000:]}")

    def type(self, line: str) -> None:
        os.write(self.controller, line.encode() + b"\r")

    def close(self, timeout: float = 60.0) -> int:
        """Wait for the program to end and return its exit status; one still running after
        `timeout` s is killed (and the wait fails)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.close(self.controller)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        """However the block ended: nothing left running, the terminal closed."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        with contextlib.suppress(OSError):
            os.close(self.controller)
