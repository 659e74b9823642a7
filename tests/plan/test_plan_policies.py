"""The planner's LRU and ARC against vLLM's own policies, on the same random operations.

The DRAM tier is vLLM's CPU offloading manager, so the simulated tier must choose the same
victims: after every operation both hold the same keys (and ARC the same lists).
"""

from __future__ import annotations

import random

import pytest

from atom_tier.plan.policies import (
    POLICIES,
    STUDY_POLICIES,
    ArcPolicy,
    LruPolicy,
    S3FifoPolicy,
    StickyPolicy,
    make_policy,
)

policies = pytest.importorskip("vllm.v1.kv_offload.cpu.policies.base")
from vllm.v1.kv_offload.cpu.policies.arc import ARCCachePolicy  # noqa: E402
from vllm.v1.kv_offload.cpu.policies.lru import LRUCachePolicy  # noqa: E402

from atom_tier.tiers.vllm_eviction import StickyCachePolicy  # noqa: E402


class _Context:
    """vLLM's ReqContext as far as the policies use it (no key positions: keep the order)."""

    def get_offload_key_position(self, key: object) -> None:
        return None


def _contents(policy: object) -> object:
    if isinstance(policy, LruPolicy):
        return set(policy.order)
    if isinstance(policy, LRUCachePolicy):
        return set(policy.chunks)
    if isinstance(policy, (StickyPolicy, StickyCachePolicy)):
        core = policy.core
        return (list(core.kept), list(core.trial), list(core.ghost))
    assert isinstance(policy, (ArcPolicy, ARCCachePolicy))
    return (list(policy.t1), list(policy.t2), list(policy.b1), list(policy.b2))


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (LruPolicy, LRUCachePolicy),
        (ArcPolicy, ARCCachePolicy),
        (StickyPolicy, StickyCachePolicy),  # the planner's adapter against vLLM's
    ],
)
def test_same_victims_as_vllm(ours: type, theirs: type) -> None:
    rng = random.Random(5)
    capacity = 12
    mine, vllm = ours(capacity), theirs(capacity)
    context = _Context()
    for step in range(3000):
        request = [rng.randrange(40) for _ in range(rng.randint(1, 6))]
        request = list(dict.fromkeys(request))
        new = [k for k in request if k not in mine]
        mine.on_store_miss(new)
        vllm.on_store_miss(new, context)
        needed = len(new) - (capacity - len(mine))
        protected = set(request)
        gone_mine = mine.evict(needed, protected) if needed > 0 else []
        gone_vllm = vllm.evict(needed, protected) if needed > 0 else []
        assert (gone_mine is None) == (gone_vllm is None), step
        if gone_mine is not None and gone_vllm is not None:
            assert gone_mine == [key for key, _ in gone_vllm], step
            for key in new:
                mine.insert(key)
                chunk = policies.ChunkStatus(key)
                chunk.ref_cnt = 0
                vllm.insert(key, chunk)
        inserted = set(new) if gone_mine is not None else set()
        reused = {k for k in request if k not in inserted and k in mine}
        mine.on_request_finished(request, inserted, reused)
        vllm.on_request_finished((tuple(request),), inserted, reused, context)
        assert _contents(mine) == _contents(vllm), step
        assert len(mine) == len(vllm.chunks) if hasattr(vllm, "chunks") else True


def test_unknown_policy_is_named() -> None:
    with pytest.raises(ValueError, match="unknown cache policy 'fifo'"):
        make_policy("fifo", 4)
    assert set(POLICIES) == {"lru", "arc", "sticky"}
    assert set(STUDY_POLICIES) == {"lru", "arc", "sticky", "s3fifo"}


def _use(policy: S3FifoPolicy, keys: list[int]) -> list[int]:
    """Store the keys not held (evicting as needed), then a request reusing the held ones."""
    new = [k for k in keys if k not in policy]
    reused = {k for k in keys if k in policy}
    needed = len(new) - policy.free
    victims = policy.evict(needed, set(keys)) if needed > 0 else []
    assert victims is not None
    for key in new:
        policy.insert(key)
    policy.on_request_finished(keys, set(new), reused)
    return victims


def test_s3fifo_keeps_a_reused_key_through_a_scan() -> None:
    # Ten slots: small FIFO 1, main 9. Key 0 is stored and reused while in small, so at its
    # eviction from small it moves to main; a scan of one-time keys 100.. then passes
    # through small alone, each evicting the previous one into the ghost.
    policy = S3FifoPolicy(10)
    _use(policy, [0])
    _use(policy, [0])
    for key in range(1, 10):
        _use(policy, [key])  # fills the tier; 0 leaves small for main at the first eviction
    assert _use(policy, [100]) == [1]  # small's oldest unused key, not 0
    assert 0 in policy.main
    for key in range(101, 130):
        _use(policy, [key])
    # Ten slots: 0 and the nine newest one-time keys (LRU would have dropped 0 long ago).
    assert set(policy.freq) == {0, *range(121, 130)}
    # A key evicted from small unused (the ghost holds the last ten: 111-120) and stored
    # again goes straight to main.
    _use(policy, [120])
    assert 120 in policy.main
