"""Circuit breaker: opens after N consecutive failures, half-opens after the delay with
one trial at a time, closes on success, reopens when the trial fails."""

from __future__ import annotations

from vllama.upstream.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(failures: int = 3, reset: float = 5.0) -> tuple[CircuitBreaker, Clock, list[BreakerState]]:
    clock = Clock()
    changes: list[BreakerState] = []
    return CircuitBreaker(failures, reset, clock=clock, on_change=changes.append), clock, changes


def test_opens_after_consecutive_failures_only() -> None:
    breaker, _, changes = make()
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.available()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.available()
    assert changes == [BreakerState.OPEN]


def test_half_open_lets_one_trial_through_then_closes_on_success() -> None:
    breaker, clock, changes = make(failures=1, reset=5.0)
    breaker.record_failure()
    clock.now += 4.9
    assert not breaker.available()
    clock.now += 0.2
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.available()
    breaker.acquire()
    assert not breaker.available()  # the trial is in flight
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.available()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_trial_reopens_for_a_full_delay() -> None:
    breaker, clock, _ = make(failures=2, reset=5.0)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 5
    breaker.acquire()
    breaker.record_failure()  # one failure suffices in half-open
    assert breaker.state is BreakerState.OPEN
    clock.now += 4
    assert not breaker.available()
    clock.now += 1
    assert breaker.available()


def test_a_trial_that_never_reports_goes_stale() -> None:
    breaker, clock, _ = make(failures=1, reset=2.0)
    breaker.record_failure()
    clock.now += 2
    breaker.acquire()
    assert not breaker.available()
    clock.now += 2
    assert breaker.available()
