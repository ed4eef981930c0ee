"""security/shared.py: the limits several worker processes share. Key concurrency checked
with real processes hammering one key; the shared rate limiter admits exactly what the
single-process token bucket admits (hypothesis, injected clock); a dead worker's share is
freed; a full table makes clients stricter, never looser."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllama.config import ApiKey
from vllama.security.limits import KeyConcurrency, RateLimiter
from vllama.security.shared import SharedLimits

CTX = multiprocessing.get_context("spawn")


@pytest.fixture
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedLimits]:
    limits = SharedLimits(CTX, 2, ["batch"], lock_dir=str(tmp_path_factory.mktemp("locks")))
    limits.attach(0)
    yield limits
    limits.close()


class SlowLimits(SharedLimits):
    """Reads the running count slowly: a check-then-add that is not atomic across
    processes would admit too many within this window."""

    def running(self, name: str) -> int:
        n = super().running(name)
        time.sleep(0.0002)
        return n


def _hammer(limits: SharedLimits, row: int, rounds: int, out: multiprocessing.Queue[int]) -> None:
    limits.attach(row)
    over = held = 0
    for i in range(rounds):
        if limits.try_acquire("batch", 3, 1):
            held += 1
            if limits.running("batch") > 3:
                over += 1
        if held and (i % 3 == 0 or held == 2):
            limits.release("batch", 1)
            held -= 1
    while held:
        limits.release("batch", 1)
        held -= 1
    out.put(over)


def test_key_limit_holds_across_processes(tmp_path_factory: pytest.TempPathFactory) -> None:
    limits = SlowLimits(CTX, 4, ["batch"], lock_dir=str(tmp_path_factory.mktemp("locks")))
    out: multiprocessing.Queue[int] = CTX.Queue()
    procs = [CTX.Process(target=_hammer, args=(limits, row, 600, out)) for row in range(4)]
    for p in procs:
        p.start()
    overs = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert overs == [0, 0, 0, 0]  # never more than 3 running across the four processes
    limits.attach(0)
    assert limits.running("batch") == 0  # every slot given back
    limits.close()


def test_a_dead_workers_share_is_freed(shared: SharedLimits) -> None:
    key = ApiKey(name="batch", key="k", max_concurrency=2)
    other_worker = KeyConcurrency(shared)
    assert other_worker.try_acquire(key) and other_worker.try_acquire(key)
    assert not other_worker.try_acquire(key)
    shared.clear_row(0)  # the parent, after worker 0 died
    assert other_worker.running("batch") == 0 and other_worker.try_acquire(key)


def test_unlimited_and_unknown_keys_stay_local(shared: SharedLimits) -> None:
    limits = KeyConcurrency(shared)
    assert all(limits.try_acquire(ApiKey(name="free", key="k")) for _ in range(100))
    late = ApiKey(name="not-at-start", key="k", max_concurrency=1)
    assert limits.try_acquire(late) and not limits.try_acquire(late)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=60, deadline=None)
@given(
    per_minute=st.integers(1, 600),
    burst=st.integers(1, 20),
    steps=st.lists(st.tuples(st.floats(0, 5), st.sampled_from("ab")), max_size=80),
)
def test_shared_rate_admits_exactly_what_the_token_bucket_admits(
    per_minute: int, burst: int, steps: list[tuple[float, str]]
) -> None:
    clock = Clock()
    limits = SharedLimits(CTX, 1, [])
    limits.attach(0)
    try:
        local = RateLimiter(per_minute, burst, clock=clock)
        across = RateLimiter(per_minute, burst, clock=clock, shared=limits)
        for gap, client in steps:
            clock.now += gap
            assert across.hit(client) == pytest.approx(local.hit(client), abs=1e-6)
    finally:
        limits.close()


def test_a_full_table_is_stricter_never_looser() -> None:
    clock = Clock()
    limits = SharedLimits(CTX, 1, [], rate_slots=8)
    limits.attach(0)
    try:
        rate = RateLimiter(60, 2, clock=clock, shared=limits)
        others = [rate.hit(f"10.0.0.{i}") == 0.0 for i in range(50)]
        assert others.count(True) < 50  # clients beyond the table share buckets
        passed = [rate.hit("192.0.2.1") == 0.0 for _ in range(5)]
        assert passed.count(True) <= 2  # never more than its burst
        clock.now += 3600  # every bucket full again: the table frees up
        assert rate.hit("192.0.2.1") == 0.0 and rate.hit("192.0.2.1") == 0.0
    finally:
        limits.close()
