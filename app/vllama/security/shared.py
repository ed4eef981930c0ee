"""Limits that hold across the façade's worker processes (`workers` > 1).

The parent creates one `SharedLimits` before the workers start and hands it to each
(multiprocessing shared memory, passed at spawn); each worker `attach`es with its index.

- Per-key concurrency: one row of counters per worker, one column per limited key. A
  worker changes only its own row; a check adds up the column. A worker that dies leaves
  its row to the parent, which zeroes it (`clear_row`) before starting a replacement, so
  its requests do not count for ever.
- Per-client rate: the token bucket in its GCRA form (one "theoretical arrival time" per
  client: the same admissions as the bucket, in one float), in a fixed table of slots
  addressed by a hash of the client address. Two clients in one slot share a bucket only
  when eight neighbouring slots are all busy with other live clients: stricter, never looser.

Check-and-update runs under an advisory file lock (flock): the kernel releases it when
its holder dies, so a crashed worker never leaves the others waiting. The critical
section is a few array reads and writes.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.context import SpawnContext
from typing import Any

RATE_SLOTS = 65536  # 1 MiB of shared memory; clients beyond this share buckets (stricter)
_PROBE = 8  # slots looked at for a client's bucket


class SharedLimits:
    def __init__(
        self,
        ctx: SpawnContext,
        workers: int,
        limited_keys: Sequence[str],
        *,
        rate_slots: int = RATE_SLOTS,
        lock_dir: str | None = None,
    ) -> None:
        self.workers = workers
        self._columns = {name: i for i, name in enumerate(sorted(set(limited_keys)))}
        self._width = max(1, len(self._columns))
        self._counts: Any = ctx.RawArray(ctypes.c_int64, workers * self._width)
        self._slots = rate_slots
        self._ids: Any = ctx.RawArray(ctypes.c_uint64, rate_slots)
        self._tat: Any = ctx.RawArray(ctypes.c_double, rate_slots)
        fd, self._lock_path = tempfile.mkstemp(
            prefix="vllama-limits-", suffix=".lock", dir=lock_dir
        )
        os.close(fd)
        self.row = -1  # this process's row; -1: the parent
        self._lock_fd: int | None = None

    def attach(self, row: int) -> None:
        """In worker `row` (0..workers-1): count in this row from now on."""
        if not 0 <= row < self.workers:
            raise ValueError(f"worker row {row} outside 0..{self.workers - 1}")
        self.row = row
        self._lock_fd = os.open(self._lock_path, os.O_RDWR)

    def close(self) -> None:
        """In the parent, once every worker is gone: remove the lock file."""
        with contextlib.suppress(OSError):
            os.unlink(self._lock_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_fd is None:
            raise RuntimeError("SharedLimits.attach() was not called in this process")
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # --- per-key concurrency -------------------------------------------------------------

    def tracks(self, name: str) -> bool:
        return name in self._columns

    def running(self, name: str) -> int:
        col = self._columns[name]
        return int(sum(self._counts[w * self._width + col] for w in range(self.workers)))

    def try_acquire(self, name: str, limit: int, weight: int) -> bool:
        col = self._columns[name]
        with self._locked():
            if self.running(name) + weight > limit:
                return False
            self._counts[self.row * self._width + col] += weight
        return True

    def release(self, name: str, weight: int) -> None:
        # Only this process writes its row: no lock needed to give slots back.
        i = self.row * self._width + self._columns[name]
        self._counts[i] = max(0, self._counts[i] - weight)

    def clear_row(self, row: int) -> None:
        """In the parent: worker `row` died; what it held is free again."""
        for col in range(self._width):
            self._counts[row * self._width + col] = 0

    # --- per-client rate (GCRA) ----------------------------------------------------------

    def hit(
        self,
        client: str,
        interval_s: float,
        tolerance_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> float:
        """0.0 when `client` may pass (counted), else seconds until it may.

        GCRA: a client's theoretical arrival time (TAT) moves `interval_s` per request;
        a request passes while TAT - now <= `tolerance_s` ((burst - 1) intervals). The
        same admissions as a token bucket of `burst` tokens refilled every `interval_s`.
        time.monotonic is the system-wide CLOCK_MONOTONIC on Linux: one clock for all
        workers.
        """
        h = int.from_bytes(hashlib.blake2b(client.encode(), digest_size=8).digest(), "big") or 1
        with self._locked():
            now = clock()
            slot = self._slot(h, now)
            tat = max(float(self._tat[slot]), now)
            if tat - now > tolerance_s:
                return tat - tolerance_s - now
            self._tat[slot] = tat + interval_s
            return 0.0

    def _slot(self, h: int, now: float) -> int:
        start = h % self._slots
        probed = [(start + i) % self._slots for i in range(_PROBE)]
        for s in probed:
            if self._ids[s] == h:
                return s
        for s in probed:  # free, or its client's bucket is full again: forget it
            if self._ids[s] == 0 or self._tat[s] <= now:
                self._ids[s] = h
                self._tat[s] = now
                return s
        return min(probed, key=lambda s: self._tat[s])  # shared with a live client
