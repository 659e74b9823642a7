"""The simulated hierarchy on hand-built workloads; every expected count is worked out by hand.

Trace blocks are 64 tokens and chunks 256 tokens (4 blocks), unless a test says otherwise.
"""

from __future__ import annotations

from plan_helpers import session, workload

from atom_tier.plan.simulator import (
    DEVICE,
    DRAM,
    NVME,
    HierarchySpec,
    TierSpec,
    ceiling_hits,
    device_hits,
    simulate,
)

IDS_8 = list(range(1, 9))  # 512 tokens: chunks 0 and 1
IDS_12 = list(range(1, 13))  # 768 tokens: chunks 0, 1, 2


def spec(dram: int, nvme: int = 0, policy: str = "lru") -> HierarchySpec:
    secondaries = (TierSpec(NVME, nvme),) if nvme else ()
    return HierarchySpec(TierSpec(DRAM, dram, policy), secondaries)


def test_dram_hit_after_the_device_lost_the_prefix() -> None:
    a = session("a", [(IDS_8, 10), (IDS_12, 10)])
    load = workload([(a, 0), (a, 1)])
    device = device_hits(load, 0)
    assert device == [0, 0]
    result = simulate(load, device, spec(dram=8))
    # Request 1 (778 tokens) finds chunks 0-1 in DRAM (512 tokens), prefills the other 266.
    assert result.prompt_tokens == 522 + 778
    assert result.tiers[DRAM].hit_tokens == 512
    assert result.prefill_tokens == 522 + 266
    assert result.tiers[DRAM].inserted == 3  # chunks 0, 1, then chunk 2


def test_device_hit_is_block_granular_and_leaves_the_last_token() -> None:
    a = session("a", [(IDS_8, 0), (IDS_8, 0), (IDS_12, 5)])
    load = workload([(a, 0), (a, 1), (a, 2)])
    # Request 1 repeats request 0 exactly (512 tokens): at most 511 may hit, in 64-token
    # blocks: 448 = chunk 0 (256) + 3 blocks of chunk 1, found as the previous partial?
    # No: chunk 1 is a full covered chunk of request 0, but the limit stops at chunk 0, and
    # request 0 had no partial chunk. So 256. Request 2 finds chunks 0 and 1: 512.
    assert device_hits(load, 100) == [0, 256, 512]


def test_partial_chunk_blocks_hit_on_the_device() -> None:
    a = session("a", [(list(range(1, 7)), 0), (IDS_12, 0)])
    load = workload([(a, 0), (a, 1)])
    # Request 0: 384 tokens = chunk 0 + 2 blocks of chunk 1. Request 1 hits 256 + 128.
    assert device_hits(load, 100) == [0, 384]
    assert ceiling_hits(load) == [0, 384]


def test_a_load_smaller_than_a_chunk_past_the_device_hit_is_dropped() -> None:
    a = session("a", [(list(range(1, 7)), 0), (IDS_12, 0)])
    load = workload([(a, 0), (a, 1)])
    device = [0, 128]  # as if only 2 blocks of the prefix were left on the device
    result = simulate(load, device, spec(dram=8))
    # Chunk 0 is in DRAM, but loading it adds 128 tokens past the device hit: less than a
    # chunk, so nothing loads; 768 - 128 tokens are prefilled.
    assert result.tiers[DRAM].hit_tokens == 0
    assert result.prefill_tokens == 384 + 640


def test_load_counts_from_the_device_hit() -> None:
    a = session("a", [(IDS_8, 0), (IDS_12, 0)])
    load = workload([(a, 0), (a, 1)])
    result = simulate(load, [0, 128], spec(dram=8))
    # Chunks 0-1 in DRAM, device holds 128 tokens: 512 - 128 = 384 load from DRAM.
    assert result.tiers[DEVICE].hit_tokens == 128
    assert result.tiers[DRAM].hit_tokens == 384
    assert result.prefill_tokens == 512 + (768 - 512)


def test_lru_evicts_the_oldest_session_and_nvme_serves_it() -> None:
    a = session("a", [(IDS_8, 10), (IDS_12, 10)])
    b = session("b", [(IDS_8, 10)])
    load = workload([(a, 0), (b, 0), (a, 1)])
    device = device_hits(load, 0)
    # DRAM of 2 chunks holds only b's prefix when a comes back.
    dram_only = simulate(load, device, spec(dram=2))
    assert dram_only.tiers[DRAM].hit_tokens == 0
    # b's 2 chunks push out a's; a's return offers 3 new chunks to a 2-chunk tier: vLLM's
    # prepare_store stores none of a batch it cannot fit.
    assert dram_only.tiers[DRAM].evicted == 2
    assert dram_only.tiers[DRAM].inserted == 2 + 2
    assert dram_only.stores_failed == 1
    with_nvme = simulate(load, device, spec(dram=2, nvme=10))
    # a's chunks 0-1 were written to NVMe on store and are promoted into DRAM: 512 tokens.
    assert with_nvme.tiers[NVME].hit_tokens == 512
    assert with_nvme.tiers[DRAM].hit_tokens == 0
    assert with_nvme.tiers[NVME].inserted == 2 + 2 + 1  # a0's, b0's, and a1's chunk 2
    assert with_nvme.prefill_tokens == 522 + 522 + 266


def test_promotion_fails_when_dram_cannot_make_room() -> None:
    a = session("a", [(IDS_12, 10), (list(range(1, 17)), 10), (list(range(1, 21)), 10)])
    b = session("b", [(IDS_12, 10)])
    load = workload([(a, 0), (a, 1), (b, 0), (a, 2)])
    result = simulate(load, device_hits(load, 0), spec(dram=3, nvme=10))
    # a0 stores chunks 0-2; a1 (1034 tokens) loads them from DRAM (768) and stores chunk 3;
    # b0 replaces all of DRAM; a2 (1290 tokens) finds chunks 0-3 on NVMe, but DRAM holds 3:
    # three are promoted (768 tokens), the fourth fails and ends the hit.
    assert result.tiers[DRAM].hit_tokens == 768
    assert result.tiers[NVME].hit_tokens == 768
    assert result.tiers[NVME].promotions_failed == 1
    assert result.prefill_tokens == 778 + (1034 - 768) + 778 + (1290 - 768)


def test_no_dram_tier_means_no_connector() -> None:
    a = session("a", [(IDS_8, 10), (IDS_12, 10)])
    load = workload([(a, 0), (a, 1)])
    result = simulate(load, [0, 0], spec(dram=0, nvme=10))
    assert result.hit_tokens == 0
    assert result.prefill_tokens == 522 + 778


def test_device_keeps_what_running_requests_hold() -> None:
    a = session("a", [(IDS_8, 10), (IDS_12, 10)])
    b = session("b", [(IDS_8, 10)])
    load = workload([(a, 0), (b, 0), (a, 1)])
    # Requests arrive at t = 0, 1, 2. Device of 4 chunks = 16 blocks less the null block: 15.
    # With 0 s requests b's 2 chunks (8 blocks) push out one of a's: a's head is most recent,
    # so chunk 1 goes first and chunk 0 stays: 256 tokens.
    assert device_hits(load, 4, 0.0) == [0, 0, 256]
    # Requests of 1.5 s: at t = 2 b still runs (holds 8 blocks) and a's request 0 has ended;
    # only one more chunk fits: a's chunk 0 again (the head is released last).
    assert device_hits(load, 4, 1.5) == [0, 0, 256]
    # Requests of 5 s: a's request 0 still runs at t = 2 and holds both chunks: 512 tokens.
    assert device_hits(load, 4, 5.0) == [0, 0, 512]


def test_the_null_block_is_never_a_cache_block() -> None:
    a = session("a", [(IDS_8, 0), (IDS_12, 0)])
    load = workload([(a, 0), (a, 1)])
    # 2 chunks = 8 blocks, but vLLM keeps one as the null block: 7. Request 0's 8 blocks do
    # not all stay; its tail chunk goes first and request 1 finds chunk 0 only.
    assert device_hits(load, 2) == [0, 256]
    assert device_hits(load, 3) == [0, 512]


def test_a_running_request_also_holds_its_unshared_blocks() -> None:
    a = session("a", [(IDS_8, 0), (IDS_12, 0)])
    b = session("b", [(IDS_8, 200)])
    load = workload([(a, 0), (b, 0), (a, 1)])
    # Requests of 1.5 s at t = 0, 1, 2. At t = 2 a's request 0 has ended and b's (712
    # tokens, 10 output tokens) still runs, holding a slot for 722 - 1 tokens: 12 blocks of
    # 64, its 2 chunks (8 blocks) and 4 more. With a's 8 cached blocks that is 20, one past
    # the 19 of a 5-chunk device: a's chunk 1 goes (tail first), and a's request 1 finds
    # chunk 0 only. Counting b's chunks alone (8 + 8 = 16) would keep both.
    assert device_hits(load, 5, 1.5) == [0, 0, 256]


def test_a_partial_chunk_takes_only_its_own_blocks() -> None:
    a = session("a", [(list(range(1, 7)), 0), (IDS_12, 0)])
    load = workload([(a, 0), (a, 1)])
    # Request 0: chunk 0 (4 blocks) + 2 blocks of chunk 1 = 6 blocks, within the 7 of a
    # 2-chunk device: all stay, and request 1 hits 256 + 128. Were the partial chunk counted
    # as a whole chunk (8 blocks), it would be evicted and the hit would be 256.
    assert device_hits(load, 2) == [0, 384]


def test_a_prompt_that_changed_inside_a_chunk_still_hits_the_blocks_before_the_change() -> None:
    a = session("a", [(IDS_8, 0), (list(range(1, 7)) + list(range(50, 56)), 0)])
    load = workload([(a, 0), (a, 1)])
    # Request 1 keeps request 0's first 6 ids (384 tokens) and then differs: chunk 0 and the
    # first 2 blocks of chunk 1 are the same blocks, so vLLM (which matches 64-token blocks
    # here) hits 384 tokens, though chunk 1 as a whole is new.
    assert device_hits(load, 100) == [0, 384]
    assert ceiling_hits(load) == [0, 384]


def test_sweep_holds_device_blocks_for_the_hold_time_not_the_request_time() -> None:
    from atom_tier.plan.deployment import Deployment
    from atom_tier.plan.sweep import run_sweep

    a = session("a", [(IDS_8, 10), (IDS_12, 10)])
    b = session("b", [(IDS_8, 10)])
    load = workload([(a, 0), (b, 0), (a, 1)])
    # A device of 4 chunks (1 KV byte per token, 1,024 tokens: 15 blocks besides the null
    # block). Held for the whole 5 s request:
    # a's request 0 still holds both its chunks at t = 2 -> 512. Held 0 s (it waited in a
    # queue for the rest): b's two chunks are the most recent, a's chunk 0 stays (head
    # released last), chunk 1 goes -> 256.
    deployment = Deployment(1, 1024, "test")
    held_long = run_sweep(load, deployment, dram_gb=[0], nvme_gb=[0], request_s=5.0)
    held_none = run_sweep(load, deployment, dram_gb=[0], nvme_gb=[0], request_s=5.0, hold_s=0)
    assert held_long.configurations[0].result.tiers[DEVICE].hit_tokens == 512
    assert held_none.configurations[0].result.tiers[DEVICE].hit_tokens == 256


def test_dram_recency_is_updated_when_a_request_ends() -> None:
    ids = list(range(1, 5))  # 266 tokens: one chunk
    a, c = session("a", [(ids, 10)]), session("c", [(ids, 10)])
    b = session("b", [(ids, 10), (ids, 10)])
    load = workload([(a, 0), (b, 0), (c, 0), (b, 1)])  # t = 0, 1, 2, 3
    # Updated at once: a's chunk is stored and used at t = 0, b's at t = 1; c's store at
    # t = 2 evicts the older, a's, and b's second request finds its chunk: 256 tokens.
    at_once = simulate(load, [0, 0, 0, 0], spec(dram=2))
    assert at_once.tiers[DRAM].hit_tokens == 256
    assert at_once.tiers[DRAM].evicted == 1
    # Requests ending 1.5 s after their lookup: a's ends at 1.5 and makes its chunk the most
    # recent, b's (stored at t = 1) ends only at 2.5, so c's store at t = 2 evicts b's chunk
    # and b's second request finds nothing (and stores it again, evicting a's).
    at_end = simulate(load, [0, 0, 0, 0], spec(dram=2), finish_s=1.5)
    assert at_end.tiers[DRAM].hit_tokens == 0
    assert at_end.tiers[DRAM].evicted == 2
