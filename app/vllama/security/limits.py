"""Admission control for inference requests, all O(1) per request:

- `KeyConcurrency`: at most `max_concurrency` requests at once per API key (429).
- `AdmissionQueue`: `max_in_flight` requests run, up to `max_queue` wait in FIFO order,
  the rest get 503 "server busy" with Retry-After instead of piling up.
- `RateLimiter`: a token bucket per client (429 + Retry-After).
- `client_address`: the peer, or X-Forwarded-For's last untrusted hop behind a trusted proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from vllama.config import ApiKey
from vllama.security.shared import SharedLimits

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
BUSY_RETRY_AFTER_S = 2


class KeyConcurrency:
    """Counts running sequences per key name (a request with `n` choices counts `n`);
    keys without a limit are not counted. With `shared` (several worker processes), the
    count is the sum over every worker (security/shared.py)."""

    def __init__(self, shared: SharedLimits | None = None) -> None:
        self._running: dict[str, int] = {}
        self._shared = shared

    def try_acquire(self, key: ApiKey | None, weight: int = 1) -> bool:
        if key is None or key.max_concurrency is None:
            return True
        if self._shared is not None and self._shared.tracks(key.name):
            return self._shared.try_acquire(key.name, key.max_concurrency, weight)
        n = self._running.get(key.name, 0)
        if n + weight > key.max_concurrency:
            return False
        self._running[key.name] = n + weight
        return True

    def release(self, key: ApiKey | None, weight: int = 1) -> None:
        if key is None or key.max_concurrency is None:
            return
        if self._shared is not None and self._shared.tracks(key.name):
            self._shared.release(key.name, weight)
            return
        n = self._running.get(key.name, 0) - weight
        if n > 0:
            self._running[key.name] = n
        else:
            self._running.pop(key.name, None)

    def running(self, name: str) -> int:
        if self._shared is not None and self._shared.tracks(name):
            return self._shared.running(name)
        return self._running.get(name, 0)


class ServerBusyError(Exception):
    """The wait queue is full."""


class AdmissionQueue:
    """`max_in_flight` slots; `max_queue` waiters in FIFO order; beyond that, refuse.

    Single event loop only (the façade's). `on_queued(n)` reports the waiting count.
    """

    def __init__(
        self,
        max_in_flight: int,
        max_queue: int,
        on_queued: Callable[[int], None] | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._on_queued = on_queued

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _report(self) -> None:
        if self._on_queued is not None:
            self._on_queued(len(self._waiters))

    async def acquire(self) -> None:
        """Take a slot, waiting in line if needed; ServerBusyError when the line is full."""
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise ServerBusyError(BUSY_MESSAGE)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._report()
        try:
            await fut  # release() hands its slot over: in_flight is already counted for us
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot arrived just as we were cancelled: pass it on
            else:
                self._remove(fut)
            raise

    def _remove(self, fut: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):  # O(n), only on cancellation while waiting
            self._waiters.remove(fut)
        self._report()

    def release(self) -> None:
        """Give the slot back, or hand it straight to the first waiter."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                self._report()
                return
        self._report()
        self.in_flight -= 1


class RateLimiter:
    """Token bucket per client: `per_minute` tokens a minute, up to `burst` at once.

    At most `max_clients` buckets are kept (least recently seen dropped first) so memory
    stays bounded whatever the number of clients. With `shared` (several worker
    processes), the buckets live in shared memory and hold across workers.
    """

    def __init__(
        self,
        per_minute: int,
        burst: int,
        *,
        max_clients: int = 65536,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedLimits | None = None,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._shared = shared

    def hit(self, client: str) -> float:
        """0.0 when the request may pass (a token is taken), else seconds until it may."""
        if self._shared is not None:
            interval = 1.0 / self.rate
            return self._shared.hit(client, interval, (self.burst - 1.0) * interval, self._clock)
        now = self._clock()
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._store(client, tokens - 1.0, now)
            return 0.0
        self._store(client, tokens, now)
        return (1.0 - tokens) / self.rate

    def _store(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        self._buckets.move_to_end(client)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class TrustedProxies:
    """Addresses and networks whose X-Forwarded-For is believed."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._exact: set[str] = set()
        self._nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            if "/" in entry:
                self._nets.append(ipaddress.ip_network(entry, strict=False))
            else:
                self._exact.add(entry)

    def __contains__(self, addr: str) -> bool:
        if addr in self._exact:
            return True
        if not self._nets:
            return False
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self._nets)


# X-Forwarded-For is read from the right, at most this many hops: a longer chain is the
# client's own invention, and the work per request stays bounded.
MAX_FORWARDED_HOPS = 16


def _ip(text: str) -> str | None:
    """`text` as a normalised IP address, or None when it is not one."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not 2 <= len(text) <= 45:  # the longest IPv6 text form (with an IPv4 tail)
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def client_address(peer: str | None, forwarded_for: str | None, trusted: TrustedProxies) -> str:
    """The client a request counts against: always the peer or a valid IP address.

    Behind a trusted proxy, X-Forwarded-For is read right to left (at most
    MAX_FORWARDED_HOPS hops) and the first hop that is not itself a trusted proxy is the
    client (the left part is client-controlled). A hop that is not an IP address ends the
    walk: the last valid hop before it is the client.
    """
    client = peer or "unknown"
    if not forwarded_for or client not in trusted:
        return client
    hops = forwarded_for.rsplit(",", MAX_FORWARDED_HOPS)[-MAX_FORWARDED_HOPS:]
    for hop in reversed(hops):
        if not hop.strip():
            continue
        ip = _ip(hop)
        if ip is None:
            break
        client = ip
        if ip not in trusted:
            break
    return client
