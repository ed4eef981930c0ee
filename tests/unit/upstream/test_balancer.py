"""Least-outstanding choice: the idlest replica wins; ties rotate."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from vllama.upstream.balancer import LeastOutstanding


@dataclass
class R:
    name: str
    outstanding: int = 0


def test_picks_the_replica_with_fewest_in_flight() -> None:
    a, b, c = R("a", 3), R("b", 1), R("c", 2)
    lb = LeastOutstanding()
    assert all(lb.pick([a, b, c]) is b for _ in range(10))


def test_ties_are_shared() -> None:
    replicas = [R("a"), R("b"), R("c")]
    lb = LeastOutstanding()
    picks = Counter(lb.pick(replicas).name for _ in range(30))  # type: ignore[union-attr]
    assert picks == {"a": 10, "b": 10, "c": 10}


def test_concurrent_load_spreads_evenly() -> None:
    replicas = [R("a"), R("b")]
    lb = LeastOutstanding()
    for _ in range(10):  # requests that stay in flight
        chosen = lb.pick(replicas)
        assert chosen is not None
        chosen.outstanding += 1
    assert [r.outstanding for r in replicas] == [5, 5]


def test_empty_gives_none() -> None:
    assert LeastOutstanding().pick([]) is None
