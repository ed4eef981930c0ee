"""Admission control: per-key concurrency, the bounded FIFO queue, the token bucket, and the
client address behind trusted proxies. Properties checked with hypothesis where they fit."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllama.config import ApiKey
from vllama.security.limits import (
    AdmissionQueue,
    KeyConcurrency,
    RateLimiter,
    ServerBusyError,
    TrustedProxies,
    client_address,
    retry_after_header,
)

LIMITED = ApiKey(name="batch", key="k", max_concurrency=3)


@given(st.lists(st.booleans(), max_size=200))
def test_key_concurrency_never_admits_more_than_the_limit(ops: list[bool]) -> None:
    limits = KeyConcurrency()
    held = 0
    for acquire in ops:
        if acquire:
            if limits.try_acquire(LIMITED):
                held += 1
            else:
                assert held == LIMITED.max_concurrency  # refused only when really full
        elif held:
            limits.release(LIMITED)
            held -= 1
        assert limits.running("batch") == held <= 3


def test_keys_without_a_limit_are_never_refused() -> None:
    limits = KeyConcurrency()
    free = ApiKey(name="free", key="k")
    assert all(limits.try_acquire(free) for _ in range(1000))
    assert all(limits.try_acquire(None) for _ in range(1000))


async def _crowd(queue: AdmissionQueue, n: int, hold: asyncio.Event) -> tuple[int, int, int]:
    """n requests arrive at once; returns (max seen running, completed, refused)."""
    running = peak = done = refused = 0

    async def one() -> None:
        nonlocal running, peak, done, refused
        try:
            await queue.acquire()
        except ServerBusyError:
            refused += 1
            return
        running += 1
        peak = max(peak, running)
        await hold.wait()
        running -= 1
        done += 1
        queue.release()

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.sleep(0)  # every task reaches acquire()
    hold.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    return peak, done, refused


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(0, 8), st.integers(0, 30))
def test_queue_bounds_running_and_waiting(max_in_flight: int, max_queue: int, n: int) -> None:
    seen: list[int] = []
    queue = AdmissionQueue(max_in_flight, max_queue, seen.append)
    peak, done, refused = asyncio.run(_crowd(queue, n, asyncio.Event()))
    admitted = min(n, max_in_flight + max_queue)
    assert peak <= max_in_flight
    assert (done, refused) == (admitted, n - admitted)
    assert max(seen, default=0) <= max_queue
    assert queue.in_flight == 0 and queue.queued == 0


async def test_queue_is_first_come_first_served() -> None:
    queue = AdmissionQueue(1, 10)
    await queue.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await queue.acquire()
        order.append(i)
        queue.release()

    tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
    await asyncio.sleep(0)
    assert queue.queued == 5
    queue.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == [0, 1, 2, 3, 4]


async def test_a_cancelled_waiter_leaves_the_line_and_loses_no_slot() -> None:
    queue = AdmissionQueue(1, 2)
    await queue.acquire()
    gone = asyncio.create_task(queue.acquire())
    stays = asyncio.create_task(queue.acquire())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert queue.queued == 1
    queue.release()
    await asyncio.wait_for(stays, 5)
    queue.release()
    assert queue.in_flight == 0 and queue.queued == 0


async def test_a_waiter_cancelled_after_its_slot_arrived_passes_it_on() -> None:
    queue = AdmissionQueue(1, 2)
    await queue.acquire()
    first = asyncio.create_task(queue.acquire())
    second = asyncio.create_task(queue.acquire())
    await asyncio.sleep(0)
    queue.release()  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 5)  # the slot went on to `second`
    assert queue.in_flight == 1
    queue.release()
    assert queue.in_flight == 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_burst_then_refuses_then_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock)
    assert [limiter.hit("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.hit("a")
    assert wait == pytest.approx(1.0) and retry_after_header(wait) == "1"
    assert limiter.hit("b") == 0.0  # buckets are per client
    clock.now += 0.5
    assert limiter.hit("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.hit("a") == 0.0


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 600),
    st.integers(1, 20),
    st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=150),
)
def test_bucket_never_admits_more_than_burst_plus_rate(
    per_minute: int, burst: int, gaps: list[float]
) -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=per_minute, burst=burst, clock=clock)
    start = clock.now
    admitted = 0
    for gap in gaps:
        clock.now += gap
        if limiter.hit("c") == 0.0:
            admitted += 1
        assert admitted <= burst + (clock.now - start) * per_minute / 60 + 1e-9


def test_bucket_memory_is_bounded() -> None:
    limiter = RateLimiter(per_minute=60, burst=1, max_clients=100)
    for i in range(1000):
        limiter.hit(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) == 100


TRUSTED = TrustedProxies(["127.0.0.1", "::1", "10.1.0.0/16"])


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),  # untrusted peer: header ignored
        ("127.0.0.1", None, "127.0.0.1"),
        ("127.0.0.1", "198.51.100.7", "198.51.100.7"),
        ("127.0.0.1", "6.6.6.6, 198.51.100.7", "198.51.100.7"),  # left part is spoofable
        ("127.0.0.1", "198.51.100.7, 10.1.2.3", "198.51.100.7"),  # skip trusted hops
        ("10.1.9.9", "198.51.100.7", "198.51.100.7"),  # CIDR entry
        ("127.0.0.1", "10.1.2.3, 127.0.0.1", "10.1.2.3"),  # all trusted: leftmost
        ("::1", " , 2001:db8::5 ", "2001:db8::5"),
        (None, None, "unknown"),
    ],
)
def test_client_address(peer: str | None, xff: str | None, client: str) -> None:
    assert client_address(peer, xff, TRUSTED) == client


@pytest.mark.parametrize(
    ("xff", "client"),
    [
        # Anything that is not an IP address ends the walk: the client is the last valid hop.
        ("<script>, 198.51.100.7", "198.51.100.7"),
        ("198.51.100.7\nINFO forged", "127.0.0.1"),
        ("x" * 100_000, "127.0.0.1"),
        ("999.1.1.1", "127.0.0.1"),
        ("1.2.3.4:5678", "127.0.0.1"),  # a port is not part of the address
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),  # normalised: one client, one rate bucket
        # At most 16 hops are read from the right, however long the header.
        (", ".join(["10.1.0.1"] * 5000) + ", 198.51.100.7", "198.51.100.7"),
        (", ".join(["10.1.0.1"] * 5000), "10.1.0.1"),
    ],
)
def test_forwarded_for_is_a_bounded_list_of_valid_addresses(xff: str, client: str) -> None:
    # Issue 13: X-Forwarded-For from a trusted peer was believed whatever it held.
    assert client_address("127.0.0.1", xff, TRUSTED) == client


@given(st.text(max_size=300))
def test_the_client_is_always_the_peer_or_an_ip_address(xff: str) -> None:
    import ipaddress

    client = client_address("127.0.0.1", xff, TRUSTED)
    assert client == "127.0.0.1" or ipaddress.ip_address(client)
    assert len(client) <= 45
