"""Least-outstanding-requests choice among the replicas that serve a model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Replica(Protocol):
    @property
    def outstanding(self) -> int: ...


R = TypeVar("R", bound=Replica)


class LeastOutstanding:
    """Pick the replica with the fewest requests in flight; ties rotate, so equal replicas
    share a sequential load instead of the first one taking everything."""

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, replicas: Sequence[R]) -> R | None:
        if not replicas:
            return None
        n = len(replicas)
        self._turn = (self._turn + 1) % n
        best: R | None = None
        for i in range(n):
            r = replicas[(self._turn + i) % n]
            if best is None or r.outstanding < best.outstanding:
                best = r
        return best
