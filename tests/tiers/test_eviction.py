"""The sticky policy's decisions on hand-made access sequences (no vLLM).

Each expectation is worked out by hand in the test's comments; the cyclic case is the one LRU
serves nothing from, so it fails if sticky ever degrades to LRU.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from atom_tier.plan.policies import CachePolicy, LruPolicy, StickyPolicy
from atom_tier.tiers.eviction import StickyCore


def _request(policy: CachePolicy, keys: Sequence[str]) -> tuple[int, list[str]]:
    """What vLLM's manager does for one request: hits from the head until the first miss,
    store the rest (ghost check, eviction, insert), then the request's recency update."""
    hits = 0
    while hits < len(keys) and keys[hits] in policy:
        hits += 1
    new = list(keys[hits:])
    evicted: list[str] = []
    if new:
        policy.on_store_miss(new)
        needed = len(new) - policy.free
        if needed > 0:
            victims = policy.evict(needed, set(keys))
            assert victims is not None
            evicted = [str(v) for v in victims]
        for key in new:
            policy.insert(key)
    policy.on_request_finished(keys, set(new), set(keys[:hits]))
    return hits, evicted


def test_cyclic_sessions_keep_one_session_where_lru_serves_nothing() -> None:
    # Three one-chunk sessions take turns in a two-chunk tier (kept part: int(2 * 0.8) = 1).
    # LRU evicts each chunk one turn before it is needed: no hit, ever. Sticky: round 1 fills
    # trial (a, b) and evicts a for c; in round 2 a comes back from the ghost into kept, and
    # from round 3 on a hits every time while b and c take turns in trial.
    rounds = 10
    for policy, expected_hits in ((LruPolicy(2), 0), (StickyPolicy(2), rounds - 2)):
        hits = 0
        for _ in range(rounds):
            for session in ("a", "b", "c"):
                hits += _request(policy, [session])[0]
        assert hits == expected_hits, policy.name


def test_cyclic_sessions_evict_the_trial_chunk_not_the_kept_one() -> None:
    policy = StickyPolicy(2)
    order = [_request(policy, [s])[1] for _ in range(3) for s in ("a", "b", "c")]
    # round 1: c evicts a; round 2: a (returning) evicts b, b evicts c, c evicts b;
    # round 3: a hits, b evicts c, c evicts b.
    assert order == [[], [], ["a"], ["b"], ["c"], ["b"], [], ["c"], ["b"]]


def test_a_shared_prefix_stays_while_sessions_cycle() -> None:
    # Every session starts with the shared chunk s (system prompt, tools); four sessions of
    # two chunks cycle through a four-chunk tier (kept part 3). s is reused from the second
    # request on, so it moves to kept and is never evicted; every request after the first
    # hits it.
    policy = StickyPolicy(4)
    hits = 0
    for _ in range(5):
        for session in ("w", "x", "y", "z"):
            found, evicted = _request(policy, ["s", session])
            assert "s" not in evicted
            hits += found
    assert hits >= 19
    assert "s" in policy.core.kept


def test_a_chain_loses_its_tail_first() -> None:
    core: StickyCore[str] = StickyCore(8)
    for key in ("h", "m", "t"):
        core.insert(key)
    core.request_finished(["h", "m", "t"], set())  # head of the prompt first
    assert core.evict(1, ()) == ["t"]
    assert core.evict(1, ()) == ["m"]


def test_a_finished_sessions_kept_chunks_make_room() -> None:
    core: StickyCore[str] = StickyCore(10)  # kept part: 8
    core.insert("old")
    for _ in range(3):
        core.request_finished(["old"], {"old"})  # kept at clock 1, reused at 2, 3: usual gap 1
    assert "old" in core.kept and core.usual_gap == 1
    core.insert("new")
    core.request_finished(["new"], set())  # clock 4: "new" is newer than "old" (3)
    # While "old" is not idle for more than 3 usual gaps it stays, and the trial chunk goes
    # (LRU would take "old", the least recently used).
    assert core.evict(1, ()) == ["new"]
    core.insert("new")
    for _ in range(3):
        core.request_finished(["new"], set())  # clock 7: "old" idle 4 > 3 gaps: finished
    assert core.evict(1, ()) == ["old"]


def test_pinned_and_protected_chunks_are_never_chosen_and_failure_changes_nothing() -> None:
    core: StickyCore[str] = StickyCore(4)
    core.insert("a", pinned=True)  # a store in flight (vLLM: ref_cnt -1)
    core.insert("b")
    core.insert("c")
    core.request_finished(["a", "b", "c"], set())
    assert core.evict(2, {"b"}) is None
    assert len(core) == 3 and not core.ghost
    assert core.evict(1, {"b"}) == ["c"]
    core.mark_evictable("a")
    assert core.evict(1, {"b"}) == ["a"]


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        StickyCore(-1)
