"""A per-engine circuit breaker that tells a flaky engine from a dead one.

It opens on a failure *rate* over a sliding time window, and only once the window holds
`min_calls` calls (resilience4j's time-based window, `minimumNumberOfCalls`,
`failureRateThreshold`): a few failures among many successes leave it closed, a dead
engine (every call fails, health checks included) opens it. After `reset_s` it is
half-open: one trial request at a time; a success closes it with an empty window, a
failure opens it again.

The window is `BUCKETS` buckets of `window_s / BUCKETS` seconds each: O(1) per call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import IntEnum

BUCKETS = 10


class BreakerState(IntEnum):
    # Values are the `vllama_engine_breaker_state` gauge's.
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class SlidingWindow:
    """Calls and failures of the last `window_s` seconds, in BUCKETS buckets."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self._width = window_s / BUCKETS
        self._clock = clock
        self._calls = [0] * BUCKETS
        self._failures = [0] * BUCKETS
        self._current = self._index()  # absolute bucket number of the newest bucket
        self.calls = 0
        self.failures = 0

    def _index(self) -> int:
        return math.floor(self._clock() / self._width)

    def _advance(self) -> int:
        now = self._index()
        stale = min(now - self._current, BUCKETS)
        for i in range(1, stale + 1):  # empty the buckets that fell out of the window
            slot = (self._current + i) % BUCKETS
            self.calls -= self._calls[slot]
            self.failures -= self._failures[slot]
            self._calls[slot] = self._failures[slot] = 0
        self._current = max(self._current, now)
        return self._current % BUCKETS

    def record(self, failed: bool) -> None:
        slot = self._advance()
        self._calls[slot] += 1
        self.calls += 1
        if failed:
            self._failures[slot] += 1
            self.failures += 1

    def totals(self) -> tuple[int, int]:
        self._advance()
        return self.calls, self.failures

    def clear(self) -> None:
        self._calls = [0] * BUCKETS
        self._failures = [0] * BUCKETS
        self.calls = self.failures = 0


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_rate: float = 0.5,
        min_calls: int = 10,
        window_s: float = 30.0,
        reset_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self._rate = failure_rate
        self._min_calls = min_calls
        self._reset_s = reset_s
        self._clock = clock
        self._on_change = on_change
        self._window = SlidingWindow(window_s, clock)
        self._opened_at: float | None = None
        self._trial_at: float | None = None  # when the half-open trial was let through
        self._reported = BreakerState.CLOSED

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            state = BreakerState.CLOSED
        elif self._clock() - self._opened_at >= self._reset_s:
            state = BreakerState.HALF_OPEN
        else:
            state = BreakerState.OPEN
        self._report(state)
        return state

    def failure_rate(self) -> tuple[int, int]:
        """(calls, failures) in the window now."""
        return self._window.totals()

    def available(self) -> bool:
        """Whether a request may go to this engine now (does not take the trial slot)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        # Half-open: one trial at a time; a trial that never reported is stale after reset_s.
        return self._trial_at is None or self._clock() - self._trial_at >= self._reset_s

    def acquire(self) -> None:
        """The request goes to this engine: in half-open state it is the trial."""
        if self.state is BreakerState.HALF_OPEN:
            self._trial_at = self._clock()

    def record_success(self) -> None:
        state = self.state
        if state is BreakerState.CLOSED:
            self._window.record(failed=False)
        elif state is BreakerState.HALF_OPEN:  # the trial passed: back in, a fresh window
            self._opened_at = self._trial_at = None
            self._window.clear()
            self._report(BreakerState.CLOSED)
        # OPEN: a request from before the breaker opened; it says nothing about now.

    def record_failure(self) -> None:
        state = self.state
        if state is not BreakerState.CLOSED:  # the trial (or a straggler) failed: reopen
            self._open()
            return
        self._window.record(failed=True)
        calls, failures = self._window.totals()
        if calls >= self._min_calls and failures >= self._rate * calls:
            self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()  # (re)open: the reset delay starts again
        self._trial_at = None
        self._window.clear()
        self._report(BreakerState.OPEN)

    def _report(self, state: BreakerState) -> None:
        if state is not self._reported:
            self._reported = state
            if self._on_change is not None:
                self._on_change(state)
