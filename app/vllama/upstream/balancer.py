"""Which replica of a model takes a request.

`LoadAware` (the default, `balancer = "load"`): each replica's load is what its engine
last reported on /metrics (running and waiting requests, KV-cache usage; polled by the
pool's health loop, upstream/load.py) plus the requests this process sent it since, so
that a burst between two polls spreads. A conversation keeps to the replica that holds
its prefix in vLLM's prefix cache (prefix affinity) unless that replica is both more than
`affinity_slack` busier than the least loaded one and more than AFFINITY_RATIO times as
busy (the two-part imbalance test of SGLang's cache-aware router, sgl-project/sglang
sgl-router: a few requests more matter on an idle engine, not on one running dozens); then,
or when it is unhealthy (the pool passes healthy replicas only), the least loaded takes it.

The preferred replica is chosen by rendezvous hashing (highest-random-weight): the hash
of (conversation key, replica URL), highest wins. A replica joining or leaving moves
only the conversations it wins or held, never reshuffles the rest.

`LeastOutstanding` (this process's own count only) and `RoundRobin` (plain rotation, the
baseline in tests/perf/routing.py) take no load and no affinity into account.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

# A waiting request means the engine's batch is full (max_num_seqs or KV cache): a
# newcomer waits behind it, where a running one only shares the batch with it.
WAITING_WEIGHT = 4.0
# KV-cache usage above this makes an engine queue or preempt new requests soon; the
# penalty grows to KV_WEIGHT (request-equivalents) at a full cache.
KV_HIGH = 0.9
KV_WEIGHT = 8.0
# An engine load older than this many seconds is not trusted (polls stopped or failing):
# the replica then counts with this process's own outstanding requests only.
STALE_AFTER_S = 10.0
# Prefix affinity gives way only when the preferred replica is also this many times as busy.
AFFINITY_RATIO = 1.5
# What identifies a conversation, bounded: the hash covers at most this many characters.
AFFINITY_MAX_CHARS = 64 * 1024
# A raw prompt's conversation is its beginning (a template, a system text, the first turn).
PROMPT_PREFIX_CHARS = 1024
PROMPT_PREFIX_TOKENS = 256  # the same for a prompt given as token ids


@dataclass(frozen=True)
class EngineLoad:
    """An engine's own figures at one poll, and this process's count at that moment."""

    running: float
    waiting: float
    kv_usage: float  # 0..1
    at: float  # time.monotonic() of the poll
    outstanding_then: int


class Replica(Protocol):
    @property
    def url(self) -> str: ...
    @property
    def outstanding(self) -> int: ...
    @property
    def load(self) -> EngineLoad | None: ...


R = TypeVar("R", bound=Replica)


class Balancer(Protocol):
    def pick(self, replicas: Sequence[R], affinity: bytes | None = None) -> R | None: ...


class RoundRobin:
    """Each replica in turn."""

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, replicas: Sequence[R], affinity: bytes | None = None) -> R | None:
        if not replicas:
            return None
        self._turn = (self._turn + 1) % len(replicas)
        return replicas[self._turn]


def _least(replicas: Sequence[R], score: Callable[[R], float], start: int) -> R:
    """The replica with the lowest score; ties go to the first from `start` on (rotating
    `start` shares a sequential load instead of the first replica taking everything)."""
    n = len(replicas)
    best = replicas[start % n]
    best_score = score(best)
    for i in range(1, n):
        r = replicas[(start + i) % n]
        s = score(r)
        if s < best_score:
            best, best_score = r, s
    return best


class LeastOutstanding:
    """The replica with the fewest requests in flight from this process."""

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, replicas: Sequence[R], affinity: bytes | None = None) -> R | None:
        if not replicas:
            return None
        self._turn += 1
        return _least(replicas, lambda r: r.outstanding, self._turn)


class LoadAware:
    """Least loaded by the engines' own figures, with prefix affinity (see the module)."""

    def __init__(
        self,
        *,
        affinity_slack: float = 4.0,
        prefix_affinity: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.affinity_slack = affinity_slack
        self.prefix_affinity = prefix_affinity
        self._clock = clock
        self._turn = 0

    def score(self, replica: Replica, now: float | None = None) -> float:
        """Request-equivalents of load on `replica` now."""
        own = replica.outstanding
        load = replica.load
        now = self._clock() if now is None else now
        if load is None or now - load.at > STALE_AFTER_S:
            return float(own)
        # What the engine ran at the poll, plus what this process sent since (or minus what
        # finished): never less than this process has in flight there right now.
        at_engine = max(load.running + load.waiting + own - load.outstanding_then, float(own))
        kv = max(0.0, load.kv_usage - KV_HIGH) / (1.0 - KV_HIGH)
        return at_engine + WAITING_WEIGHT * load.waiting + KV_WEIGHT * min(kv, 1.0)

    def pick(self, replicas: Sequence[R], affinity: bytes | None = None) -> R | None:
        if not replicas:
            return None
        if len(replicas) == 1:
            return replicas[0]
        now = self._clock()
        scores = {r.url: self.score(r, now) for r in replicas}
        self._turn += 1
        best = _least(replicas, lambda r: scores[r.url], self._turn)
        if affinity is None or not self.prefix_affinity:
            return best
        preferred = max(replicas, key=lambda r: rendezvous_weight(affinity, r.url))
        mine, least = scores[preferred.url], scores[best.url]
        if mine - least > self.affinity_slack and mine > AFFINITY_RATIO * least:
            return best  # much busier: the prefix is cheaper to compute again elsewhere
        return preferred


def rendezvous_weight(key: bytes, url: str) -> int:
    """Highest-random-weight hashing: the replica with the highest weight for `key` wins."""
    digest = hashlib.blake2b(key + b"\0" + url.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def make_balancer(kind: str, *, affinity_slack: float, prefix_affinity: bool) -> Balancer:
    if kind == "round-robin":
        return RoundRobin()
    if kind == "least-outstanding":
        return LeastOutstanding()
    return LoadAware(affinity_slack=affinity_slack, prefix_affinity=prefix_affinity)


# --- the conversation a request belongs to ------------------------------------------------


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def affinity_key(body: Mapping[str, Any]) -> bytes | None:
    """What keeps a conversation on one replica, from an OpenAI request body: a chat's
    messages up to its first user message (system prompt and opening question: the same
    for every later turn of the conversation), or a prompt's first PROMPT_PREFIX_CHARS.
    None when the body has neither."""
    h = hashlib.blake2b(digest_size=16)
    budget = AFFINITY_MAX_CHARS
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            part = f"{message.get('role')}\0{_text(message.get('content'))}\0"[:budget]
            h.update(part.encode("utf-8", "surrogatepass"))
            budget -= len(part)
            if message.get("role") == "user" or budget <= 0:
                break
        return h.digest()
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of prompts: the first one's conversation
    if isinstance(prompt, list):  # token ids
        prompt = prompt[:PROMPT_PREFIX_TOKENS]
    if not prompt:
        return None
    h.update(_text(prompt)[:PROMPT_PREFIX_CHARS].encode("utf-8", "surrogatepass"))
    return h.digest()
