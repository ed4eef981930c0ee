"""A per-engine circuit breaker: opens after N consecutive failures, lets one trial
request through after a delay (half-open), closes on the first success."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class BreakerState(IntEnum):
    # Values are the `vllama_engine_breaker_state` gauge's.
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        reset_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self._threshold = failures
        self._reset_s = reset_s
        self._clock = clock
        self._on_change = on_change
        self._failures = 0
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
        self._failures = 0
        self._opened_at = None
        self._trial_at = None
        self._report(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        self._trial_at = None
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()  # (re)open: the reset delay starts again
            self._report(BreakerState.OPEN)

    def _report(self, state: BreakerState) -> None:
        if state is not self._reported:
            self._reported = state
            if self._on_change is not None:
                self._on_change(state)
