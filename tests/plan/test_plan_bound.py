"""Belady's MIN bound (atom_tier/plan/bound.py) on hand-made access sequences.

Chunks are 256 tokens; a request of ``n`` chunks has ``n * 256 + 1`` input tokens, so it has no
tail chunk of its own and looks up all ``n`` chunks (the connector's limit is the prompt minus
one token). Expected counts are worked out by hand in each test's comment.
"""

from __future__ import annotations

import random

import pytest

from atom_tier.plan.bound import belady_min, lookup_ranges
from atom_tier.plan.policies import STUDY_POLICIES
from atom_tier.plan.simulator import DRAM, HierarchySpec, TierSpec, simulate
from atom_tier.plan.workload import PlannedRequest, Workload

CHUNK = 256


def workload(chains: list[list[int]]) -> Workload:
    requests = tuple(
        PlannedRequest(
            serial=serial,
            time=float(serial),
            user=0,
            session_id=f"s{chain[0]}",
            cycle=0,
            index=serial,
            input_tokens=len(chain) * CHUNK + 1,
            covered_tokens=len(chain) * CHUNK,
            chain=list(chain),
            covered_chunks=len(chain),
            partial=None,
            own_partial=None,
        )
        for serial, chain in enumerate(chains)
    )
    return Workload(requests, CHUNK, 16, 0, 0, 0, float(len(chains)))


A, B, C = [1, 2], [3, 4], [5, 6]
CYCLE = [A, B, C] * 3  # three sessions of two chunks, taking turns three times


def lru_hits(work: Workload, chunks: int, device: list[int] | None = None) -> int:
    device = device or [0] * len(work.requests)
    result = simulate(work, device, HierarchySpec(TierSpec(DRAM, chunks, "lru")))
    return result.tiers[DRAM].hit_tokens


def test_cyclic_sessions_lru_gets_nothing_min_keeps_two_sessions() -> None:
    # 4 chunks for a cycle of 6. LRU: each store evicts the session that comes back next: 0.
    # MIN: A and B are stored first; C (next used at request 6) is used later than both, so it
    # is never admitted (bypass). A hits at requests 4 and 7, B at 5 and 8: 4 x 2 chunks.
    work = workload(CYCLE)
    assert lru_hits(work, 4) == 0
    bound = belady_min(work, [0] * 9, 4)
    assert bound.hit_chunks == 8
    assert bound.hit_tokens == 8 * CHUNK
    assert bound.lookup_chunks == 18
    assert bound.reachable_chunks == 12  # requests 4-9 repeat a session seen before


def test_room_for_every_session_hits_every_repeat() -> None:
    # 6 chunks hold all three sessions: every chunk of requests 4-9 hits, as with LRU.
    work = workload(CYCLE)
    assert belady_min(work, [0] * 9, 6).hit_chunks == 12
    assert lru_hits(work, 6) == 12 * CHUNK


def test_bypass_keeps_the_key_needed_sooner() -> None:
    # One chunk; sessions A (key 1) and B (key 2) go A B A B A. LRU stores B over A and A over
    # B: 0. MIN: after request 1 it holds 1 (next use 3); 2's next use (4) is later: not
    # admitted. Request 3 hits 1 (next use 5); 2 is never used after request 4: not admitted.
    # Request 5 hits 1. Two chunks.
    work = workload([[1], [2], [1], [2], [1]])
    assert lru_hits(work, 1) == 0
    assert belady_min(work, [0] * 5, 1).hit_chunks == 2


def test_shared_prefix_kept_by_one_chunk() -> None:
    # Three sessions share their first chunk (key 9): with one chunk MIN keeps 9 throughout
    # and every request after the first hits it: 8 chunks.
    work = workload([[9, 1], [9, 2], [9, 3]] * 3)
    assert belady_min(work, [0] * 9, 1).hit_chunks == 8


def test_device_hit_chunks_are_not_looked_up() -> None:
    # The same chain twice; the second request's first chunk is on the device (256 tokens),
    # so only key 2 is looked up there. Key 1 is never looked up again, so MIN does not keep
    # it and one chunk is enough for the one hit.
    work = workload([[1, 2], [1, 2]])
    assert lookup_ranges(work, [0, CHUNK]) == [(0, 2), (1, 2)]
    bound = belady_min(work, [0, CHUNK], 1)
    assert (bound.hit_chunks, bound.lookup_chunks) == (1, 3)


def test_no_capacity_no_hits() -> None:
    assert belady_min(workload(CYCLE), [0] * 9, 0).hit_chunks == 0
    with pytest.raises(ValueError):
        belady_min(workload(CYCLE), [0] * 9, -1)


@pytest.mark.parametrize("chunks", [1, 3, 8, 20])
def test_bound_at_least_every_policy(chunks: int) -> None:
    # Sessions with a shared head and growing chains, taking turns at random: no simulated
    # policy may serve more DRAM hit tokens than the bound.
    rng = random.Random(chunks)
    chains: dict[int, list[int]] = {s: [100, 1000 * (s + 1)] for s in range(6)}
    order: list[list[int]] = []
    for step in range(120):
        session = rng.randrange(6)
        chain = chains[session]
        chain.append(1000 * (session + 1) + step + 1)
        order.append(list(chain[: rng.randint(max(1, len(chain) - 2), len(chain))]))
    work = workload(order)
    device = [0] * len(order)
    bound = belady_min(work, device, chunks).hit_tokens
    for name in STUDY_POLICIES:
        result = simulate(work, device, HierarchySpec(TierSpec(DRAM, chunks, name)))
        assert result.tiers[DRAM].hit_tokens <= bound, name
