"""Circuit breaker with an injected clock: it opens on a failure rate over a sliding window
once the window holds enough calls (a flaky engine stays in, a dead one goes out), forgets
calls older than the window, half-opens after the delay with one trial at a time, closes
on success with a fresh window, reopens when the trial fails."""

from __future__ import annotations

from vllama.upstream.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    rate: float = 0.5, min_calls: int = 10, window: float = 30.0, reset: float = 5.0
) -> tuple[CircuitBreaker, Clock, list[BreakerState]]:
    clock = Clock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(
        failure_rate=rate,
        min_calls=min_calls,
        window_s=window,
        reset_s=reset,
        clock=clock,
        on_change=changes.append,
    )
    return breaker, clock, changes


def test_a_burst_of_failures_among_many_successes_keeps_it_closed() -> None:
    # The keep-alive race of issue 13: a few consecutive failures among hundreds of
    # successes. The old breaker opened on the third consecutive failure.
    breaker, clock, changes = make()
    for _ in range(200):
        breaker.record_success()
        clock.now += 0.01
    for _ in range(20):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.available()
    assert breaker.failure_rate() == (220, 20)
    assert changes == []


def test_a_dead_engine_opens_it_once_the_window_has_enough_calls() -> None:
    breaker, clock, changes = make(min_calls=10)
    for _ in range(9):
        breaker.record_failure()
        clock.now += 1
    assert breaker.state is BreakerState.CLOSED  # 9 calls: too few to judge
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.available()
    assert changes == [BreakerState.OPEN]


def test_rate_threshold_is_inclusive_and_successes_count() -> None:
    breaker, _, _ = make(rate=0.5, min_calls=4)
    breaker.record_success()
    breaker.record_failure()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()  # 2 of 4 = 50 %
    assert breaker.state is BreakerState.OPEN


def test_calls_older_than_the_window_are_forgotten() -> None:
    breaker, clock, _ = make(min_calls=10, window=30.0)
    for _ in range(9):
        breaker.record_failure()
    clock.now += 31  # all nine slide out
    assert breaker.failure_rate() == (0, 0)
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.failure_rate() == (1, 1)


def test_window_slides_bucket_by_bucket() -> None:
    breaker, clock, _ = make(min_calls=100, window=10.0)  # 10 buckets of 1 s
    for _ in range(5):
        breaker.record_failure()
        clock.now += 2.0  # one call every 2 s, at 1000, 1002, ..., 1008
    clock.now = 1009.9  # the window: buckets 1000 .. 1009
    assert breaker.failure_rate() == (5, 5)
    clock.now = 1010.0  # buckets 1001 .. 1010: the call at 1000 slid out
    assert breaker.failure_rate() == (4, 4)
    clock.now += 100
    assert breaker.failure_rate() == (0, 0)


def test_half_open_lets_one_trial_through_then_closes_on_success() -> None:
    breaker, clock, changes = make(min_calls=1, reset=5.0)
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
    assert breaker.failure_rate() == (0, 0)  # a fresh window
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_a_success_while_open_does_not_close_it() -> None:
    breaker, clock, _ = make(min_calls=1, reset=5.0)
    breaker.record_failure()
    breaker.record_success()  # a request from before it opened finishing late
    assert breaker.state is BreakerState.OPEN
    clock.now += 5
    assert breaker.state is BreakerState.HALF_OPEN


def test_failed_trial_reopens_for_a_full_delay() -> None:
    breaker, clock, _ = make(min_calls=2, reset=5.0)
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
    breaker, clock, _ = make(min_calls=1, reset=2.0)
    breaker.record_failure()
    clock.now += 2
    breaker.acquire()
    assert not breaker.available()
    clock.now += 2
    assert breaker.available()
