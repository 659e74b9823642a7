"""The planner's LRU and ARC against vLLM's own policies, on the same random operations.

The DRAM tier is vLLM's CPU offloading manager, so the simulated tier must choose the same
victims: after every operation both hold the same keys (and ARC the same lists).
"""

from __future__ import annotations

import random

import pytest

from atom_tier.plan.policies import POLICIES, ArcPolicy, LruPolicy, make_policy

policies = pytest.importorskip("vllm.v1.kv_offload.cpu.policies.base")
from vllm.v1.kv_offload.cpu.policies.arc import ARCCachePolicy  # noqa: E402
from vllm.v1.kv_offload.cpu.policies.lru import LRUCachePolicy  # noqa: E402


class _Context:
    """vLLM's ReqContext as far as the policies use it (no key positions: keep the order)."""

    def get_offload_key_position(self, key: object) -> None:
        return None


def _contents(policy: object) -> object:
    if isinstance(policy, LruPolicy):
        return set(policy.order)
    if isinstance(policy, LRUCachePolicy):
        return set(policy.chunks)
    assert isinstance(policy, (ArcPolicy, ARCCachePolicy))
    return (list(policy.t1), list(policy.t2), list(policy.b1), list(policy.b2))


@pytest.mark.parametrize(
    ("ours", "theirs"), [(LruPolicy, LRUCachePolicy), (ArcPolicy, ARCCachePolicy)]
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
    assert set(POLICIES) == {"lru", "arc"}
