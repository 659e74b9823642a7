"""Stores deferred to when vLLM computes the chunks (its ``prepare_store`` at the engine step
that completes them), not made at the lookup. Every count is worked out by hand.

Trace blocks are 64 tokens and chunks 256 tokens (4 blocks); no device hits.
"""

from __future__ import annotations

from plan_helpers import session, workload

from atom_tier.plan.simulator import DRAM, NVME, Hierarchy, HierarchySpec, TierSpec
from atom_tier.plan.workload import PlannedRequest

IDS_4 = list(range(1, 5))  # 266 tokens with a 10-token tail: chunk 0
IDS_8 = list(range(1, 9))  # 522 tokens: chunks 0 and 1
IDS_12 = list(range(1, 13))  # 778 tokens: chunks 0, 1, 2
IDS_16 = list(range(1, 17))  # 1,034 tokens: chunks 0-3


def lru(chunks: int) -> HierarchySpec:
    return HierarchySpec(TierSpec(DRAM, chunks, "lru"))


def test_a_lookup_before_the_store_misses_and_one_after_it_hits() -> None:
    a = session("a", [(IDS_8, 10), (IDS_12, 10)])
    load = workload([(a, 0), (a, 1)])  # looked up at t = 0 and t = 1
    # Request 0's chunks 0-1 stored at t = 2: request 1, looked up at t = 1, finds none and
    # prefills all 778 tokens; at t = 5 it stores chunks 0-1 (already there) and chunk 2.
    late = Hierarchy(lru(8), 256).run(load, [0, 0], times=[(2.0, 3.0), (5.0, 6.0)])
    assert late.tiers[DRAM].hit_tokens == 0
    assert late.prefill_tokens == 522 + 778
    assert late.tiers[DRAM].inserted == 2 + 1
    # Stored at t = 0.5, before request 1's lookup: it loads chunks 0-1 (512 tokens).
    early = Hierarchy(lru(8), 256).run(load, [0, 0], times=[(0.5, 3.0), (5.0, 6.0)])
    assert early.tiers[DRAM].hit_tokens == 512
    assert early.prefill_tokens == 522 + 266


def test_a_deferred_store_evicts_only_when_it_happens() -> None:
    a = session("a", [(IDS_4, 10), (IDS_4, 10)])
    b, c = session("b", [(IDS_4, 10)]), session("c", [(IDS_4, 10)])
    load = workload([(a, 0), (b, 0), (c, 0), (a, 1)])  # t = 0, 1, 2, 3; one chunk each
    # At once (each ends when looked up): c's store at t = 2 evicts a's chunk from the
    # 2-chunk tier, so a's second request misses and stores its chunk again, evicting b's.
    at_once = [(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]
    result = Hierarchy(lru(2), 256).run(load, [0] * 4, times=at_once)
    assert result.tiers[DRAM].hit_tokens == 0
    assert result.tiers[DRAM].evicted == 2
    # c's chunk computed only at t = 4: a's second request, at t = 3, loads its chunk
    # (256 tokens) and ends, making it the most recent; c's store then evicts b's.
    deferred = [(0.0, 0.0), (1.0, 1.0), (4.0, 4.0), (3.0, 3.0)]
    result = Hierarchy(lru(2), 256).run(load, [0] * 4, times=deferred)
    assert result.tiers[DRAM].hit_tokens == 256
    assert result.tiers[DRAM].evicted == 1
    assert result.tiers[DRAM].inserted == 3


def test_chunks_are_stored_as_the_steps_compute_them() -> None:
    a = session("a", [(IDS_12, 10), (IDS_16, 10)])
    b = session("b", [(IDS_16, 10)])
    load = workload([(a, 0), (a, 1), (b, 0)])
    tiers = Hierarchy(lru(8), 256)
    first, second, other = load.requests
    tiers.lookup(first, 0, 0.0, defer=True)
    looked = tiers.detach()
    assert looked is not None
    # A first step computes 600 of its 778 tokens: chunks 0 and 1 are stored (chunk 2 ends
    # at token 768).
    tiers.store(looked, 600, 1.0)
    assert tiers.result.tiers[DRAM].inserted == 2
    # Request 1 (1,034 tokens, chunks 0-3 covered, at most 4 chunks) looked up at t = 2
    # loads chunks 0-1 only (512 tokens) and stores at once chunks 2 and 3.
    assert tiers.lookup(second, 0, 2.0) == 512
    tiers.hold(2.0)
    assert tiers.result.tiers[DRAM].inserted == 4
    # Request 0's second step computes the rest: chunk 2 is in DRAM already, nothing new.
    tiers.store(looked, 778, 3.0)
    assert tiers.result.tiers[DRAM].inserted == 4
    tiers.hold_detached(looked, 3.0)
    # Another session shares no key: it misses and stores its 4 chunks.
    assert tiers.lookup(other, 0, 4.0) == 0
    tiers.hold(4.0)
    tiers.finish()
    assert tiers.result.tiers[DRAM].inserted == 8
    assert tiers.result.tiers[DRAM].hit_tokens == 512
    assert tiers.result.prefill_tokens == 778 + (1034 - 512) + 1034


def _warm(tiers: Hierarchy, *requests: tuple[PlannedRequest, float]) -> None:
    """Each request looked up, stored and ended at its time."""
    for request, time in requests:
        tiers.lookup(request, 0, time)
        tiers.hold(time)


def test_chunks_a_load_holds_are_not_evicted_until_the_load_is_done() -> None:
    a = session("a", [(IDS_8, 10), (IDS_12, 10)])
    b, c = session("b", [(IDS_4, 10)]), session("c", [(IDS_4, 10)])
    a0, b0, a1, c0 = workload([(a, 0), (b, 0), (a, 1), (c, 0)]).requests
    for done in (False, True):
        tiers = Hierarchy(lru(3), 256)
        # The 3-chunk tier holds, least recent first: a's chunk 1, a's chunk 0, b's chunk.
        _warm(tiers, (a0, 0.0), (b0, 1.0))
        # a's second request loads a's chunks 0-1 (512 tokens); vLLM pins them
        # (prepare_load) until the load is done (complete_load).
        assert tiers.lookup(a1, 0, 2.0, defer=True) == 512
        looked = tiers.detach()
        assert looked is not None
        if done:
            tiers.loaded(looked, 2.5)
        # c's chunk needs one chunk of room at t = 3: the least recent one no load holds.
        _warm(tiers, (c0, 3.0))
        if done:  # a's chunk 1, the least recent, goes
            assert a1.chain[1] not in tiers.dram and b0.chain[0] in tiers.dram
        else:  # a's chunks are held: b's goes
            assert a1.chain[0] in tiers.dram and a1.chain[1] in tiers.dram
            assert b0.chain[0] not in tiers.dram
        assert tiers.result.tiers[DRAM].evicted == 1


def test_a_load_in_flight_leaves_no_room_to_promote_into() -> None:
    a = session("a", [(IDS_8, 10), (IDS_12, 10)])
    b = session("b", [(IDS_8, 10), (IDS_12, 10)])
    a0, b0, b1, a1 = workload([(a, 0), (b, 0), (b, 1), (a, 1)]).requests
    spec = HierarchySpec(TierSpec(DRAM, 2, "lru"), (TierSpec(NVME, 16),))
    for done in (False, True):
        tiers = Hierarchy(spec, 256)
        # DRAM (2 chunks) holds b's chunks 0-1; NVMe holds a's and b's (written on store).
        _warm(tiers, (a0, 0.0), (b0, 1.0))
        assert tiers.lookup(b1, 0, 2.0, defer=True) == 512  # b's chunks pinned
        looked = tiers.detach()
        assert looked is not None
        if done:
            tiers.loaded(looked, 2.5)
        # a's second request finds a's chunks 0-1 on NVMe: promoting them into DRAM needs
        # both of its chunks, which b's load holds until it is done.
        assert tiers.lookup(a1, 0, 3.0) == (512 if done else 0)
        assert tiers.result.tiers[NVME].promotions_failed == (0 if done else 1)


def test_a_model_that_gives_no_load_time_pins_nothing() -> None:
    a = session("a", [(IDS_8, 10), (IDS_12, 10)])
    b, c = session("b", [(IDS_4, 10)]), session("c", [(IDS_4, 10)])
    a0, b0, a1, c0 = workload([(a, 0), (b, 0), (a, 1), (c, 0)]).requests
    tiers = Hierarchy(lru(3), 256)
    _warm(tiers, (a0, 0.0), (b0, 1.0))
    # Stores at its first token (t = 8) and ends at t = 9: the load's own end is not given.
    assert tiers.lookup(a1, 0, 2.0, defer=True) == 512
    tiers.hold(9.0, store_at=8.0)
    _warm(tiers, (c0, 3.0))
    assert a1.chain[1] not in tiers.dram and b0.chain[0] in tiers.dram
