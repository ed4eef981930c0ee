"""Choosing a replica: least outstanding (ties rotate), round robin, and the load-aware
balancer with injected engine loads (running, waiting, KV cache, stale figures, this
process's requests since the poll) and prefix affinity (rendezvous hashing: a conversation
keeps its replica, few keys move when replicas come and go, a much busier replica is
left); the conversation key of chat and prompt bodies."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from vllama.upstream.balancer import (
    EngineLoad,
    LeastOutstanding,
    LoadAware,
    RoundRobin,
    affinity_key,
    make_balancer,
)

NOW = 1000.0


@dataclass
class R:
    url: str
    outstanding: int = 0
    load: EngineLoad | None = None


def loaded(url: str, running: float = 0, waiting: float = 0, kv: float = 0.0, **kw: Any) -> R:
    outstanding = kw.pop("outstanding", 0)
    then = kw.pop("then", outstanding)
    at = kw.pop("at", NOW)
    return R(url, outstanding, EngineLoad(running, waiting, kv, at, then))


def aware(**kw: Any) -> LoadAware:
    return LoadAware(clock=lambda: NOW, **kw)


def key(i: int) -> bytes:
    return affinity_key({"messages": [{"role": "user", "content": f"conversation {i}"}]}) or b""


# --- least outstanding and round robin -------------------------------------------------


def test_least_outstanding_picks_the_idlest_and_shares_ties() -> None:
    a, b, c = R("a", 3), R("b", 1), R("c", 2)
    lb = LeastOutstanding()
    assert all(lb.pick([a, b, c]) is b for _ in range(10))
    replicas = [R("a"), R("b"), R("c")]
    picks = Counter(lb.pick(replicas).url for _ in range(30))  # type: ignore[union-attr]
    assert picks == {"a": 10, "b": 10, "c": 10}


def test_concurrent_load_spreads_evenly() -> None:
    for lb in (LeastOutstanding(), aware()):
        replicas = [R("a"), R("b")]
        for _ in range(10):  # requests that stay in flight
            chosen = lb.pick(replicas)
            assert chosen is not None
            chosen.outstanding += 1
        assert [r.outstanding for r in replicas] == [5, 5]


def test_round_robin_ignores_load() -> None:
    busy, idle = loaded("busy", running=50, waiting=20), R("idle")
    lb = RoundRobin()
    assert Counter(lb.pick([busy, idle]).url for _ in range(10)) == {"busy": 5, "idle": 5}  # type: ignore[union-attr]


def test_empty_gives_none() -> None:
    for lb in (LeastOutstanding(), RoundRobin(), aware()):
        assert lb.pick([]) is None
        assert lb.pick([], key(1)) is None


def test_make_balancer_by_name() -> None:
    assert isinstance(
        make_balancer("round-robin", affinity_slack=4, prefix_affinity=True), RoundRobin
    )
    assert isinstance(
        make_balancer("least-outstanding", affinity_slack=4, prefix_affinity=True), LeastOutstanding
    )
    lb = make_balancer("load", affinity_slack=2.5, prefix_affinity=False)
    assert isinstance(lb, LoadAware) and lb.affinity_slack == 2.5 and not lb.prefix_affinity


# --- load-aware: the engines' own figures ----------------------------------------------


def test_the_engine_with_fewer_running_and_waiting_wins() -> None:
    a = loaded("a", running=12, waiting=0)
    b = loaded("b", running=4, waiting=0)
    assert aware().pick([a, b]) is b
    # Waiting requests weigh more than running ones: a full batch makes a newcomer wait.
    c = loaded("c", running=2, waiting=3)  # 2 + 3 + 4 x 3 = 17
    d = loaded("d", running=12, waiting=0)  # 12
    assert aware().pick([c, d]) is d


def test_other_clients_load_counts_though_this_process_sent_nothing() -> None:
    # Another façade (or worker) keeps `a` busy: this process's own count is 0 on both.
    a, b = loaded("a", running=30), loaded("b", running=1)
    lb = aware()
    assert all(lb.pick([a, b]) is b for _ in range(10))


def test_a_nearly_full_kv_cache_is_avoided() -> None:
    full = loaded("full", running=3, kv=0.99)  # 3 + 8 x 0.9 = 10.2
    roomy = loaded("roomy", running=8, kv=0.5)
    assert aware().pick([full, roomy]) is roomy
    assert aware().score(loaded("x", running=3, kv=0.85)) == 3.0  # below KV_HIGH: no penalty


def test_requests_sent_since_the_poll_count_until_the_next_one() -> None:
    # Both reported 5 running; since then this process sent 6 more to `a`.
    a = loaded("a", running=5, outstanding=6, then=0)
    b = loaded("b", running=5)
    assert aware().score(a) == 11 and aware().pick([a, b]) is b
    # Finished ones are taken off again, but never below what is in flight from here.
    c = loaded("c", running=1, outstanding=3, then=8)
    assert aware().score(c) == 3


def test_stale_or_missing_figures_fall_back_to_own_outstanding() -> None:
    stale = loaded("stale", running=100, outstanding=1, at=NOW - 60)
    fresh = loaded("fresh", running=3)
    assert aware().score(stale) == 1
    assert aware().pick([stale, fresh]) is stale
    assert aware().pick([R("x", 2), R("y", 1)]).url == "y"  # type: ignore[union-attr]


# --- prefix affinity -------------------------------------------------------------------


def test_a_conversation_keeps_its_replica() -> None:
    replicas = [loaded(u, running=2) for u in ("a", "b", "c")]
    lb = aware()
    for i in range(50):
        first = lb.pick(replicas, key(i))
        assert all(lb.pick(replicas, key(i)) is first for _ in range(5))


def test_conversations_spread_over_replicas() -> None:
    replicas = [loaded(u) for u in ("a", "b", "c", "d")]
    picks = Counter(aware().pick(replicas, key(i)).url for i in range(2000))  # type: ignore[union-attr]
    assert set(picks) == {"a", "b", "c", "d"}
    assert all(350 < n < 650 for n in picks.values()), picks


def test_replicas_coming_and_going_move_few_conversations() -> None:
    lb = aware()
    three = [loaded(u) for u in ("a", "b", "c")]
    before = {i: lb.pick(three, key(i)).url for i in range(3000)}  # type: ignore[union-attr]
    # `c` goes (unhealthy, taken out): only its conversations move.
    after = {i: lb.pick(three[:2], key(i)).url for i in range(3000)}  # type: ignore[union-attr]
    assert all(after[i] == u for i, u in before.items() if u != "c")
    # `d` joins: it takes about a quarter, everyone else stays where they were.
    four = [*three, loaded("d")]
    joined = {i: lb.pick(four, key(i)).url for i in range(3000)}  # type: ignore[union-attr]
    moved = [i for i in before if joined[i] != before[i]]
    assert all(joined[i] == "d" for i in moved)
    assert 600 < len(moved) < 900


def test_affinity_gives_way_to_a_much_busier_replica() -> None:
    lb = aware(affinity_slack=4)
    idle = [loaded(u) for u in ("a", "b")]
    k = next(key(i) for i in range(100) if lb.pick(idle, key(i)).url == "a")  # type: ignore[union-attr]
    within = [loaded("a", running=4), loaded("b", running=0)]
    assert lb.pick(within, k).url == "a"  # type: ignore[union-attr]
    beyond = [loaded("a", running=5), loaded("b", running=0)]
    assert lb.pick(beyond, k).url == "b"  # type: ignore[union-attr]
    waiting = [loaded("a", running=0, waiting=1), loaded("b", running=0)]  # 1 + 4 x 1 = 5
    assert lb.pick(waiting, k).url == "b"  # type: ignore[union-attr]
    # Among busy engines a few more matter little: 40 vs 30 is within 1.5 times.
    busy = [loaded("a", running=40), loaded("b", running=30)]
    assert lb.pick(busy, k).url == "a"  # type: ignore[union-attr]
    busier = [loaded("a", running=46), loaded("b", running=30)]
    assert lb.pick(busier, k).url == "b"  # type: ignore[union-attr]


def test_affinity_off_or_without_a_key_is_least_loaded() -> None:
    lb = aware(prefix_affinity=False)
    replicas = [loaded("a", running=2), loaded("b", running=1)]
    assert all(lb.pick(replicas, key(i)).url == "b" for i in range(20))  # type: ignore[union-attr]
    assert aware().pick(replicas, None).url == "b"  # type: ignore[union-attr]


# --- the conversation key --------------------------------------------------------------


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


SYSTEM = ("system", "You are a careful assistant. " * 50)


def test_every_turn_of_a_conversation_has_one_key() -> None:
    turn1 = chat(SYSTEM, ("user", "plan a trip to Lisbon"))
    turn2 = chat(
        SYSTEM, ("user", "plan a trip to Lisbon"), ("assistant", "Day 1..."), ("user", "and day 3?")
    )
    assert affinity_key(turn1) == affinity_key(turn2)


def test_conversations_differ_by_system_prompt_or_first_question() -> None:
    base = affinity_key(chat(SYSTEM, ("user", "plan a trip to Lisbon")))
    assert affinity_key(chat(SYSTEM, ("user", "plan a trip to Porto"))) != base
    assert affinity_key(chat(("system", "other"), ("user", "plan a trip to Lisbon"))) != base
    assert affinity_key(chat(("user", "plan a trip to Lisbon"))) != base
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert affinity_key(parts) == affinity_key(parts) is not None


def test_prompts_keep_to_their_beginning() -> None:
    head = "### Template\n" + "x" * 2000
    assert affinity_key({"prompt": head + "question one"}) == affinity_key(
        {"prompt": head + "question two"}
    )
    assert affinity_key({"prompt": "short a"}) != affinity_key({"prompt": "short b"})
    assert affinity_key({"prompt": ["batch first", "batch second"]}) == affinity_key(
        {"prompt": "batch first"}
    )
    assert affinity_key({"prompt": [1, 2, 3]}) is not None


@pytest.mark.parametrize("body", [{}, {"messages": []}, {"prompt": ""}, {"input": "embed me"}])
def test_no_conversation_no_key(body: dict[str, Any]) -> None:
    assert affinity_key(body) is None


def test_huge_bodies_are_hashed_in_bounded_time() -> None:
    giant = chat(("system", "s" * 10_000_000), ("user", "u"))
    other = chat(("system", "s" * 10_000_000 + "t"), ("user", "u"))
    assert affinity_key(giant) == affinity_key(other)  # only the first 64 KiB count
