"""The sticky eviction policy as vLLM 0.32's out-of-tree CPU ``CachePolicy``.

``ATOM_TIER_EVICTION=sticky`` puts ``eviction_policy: StickyCachePolicy`` and
``cache_policy_module_path: atom_tier.tiers.vllm_eviction`` in the connector's extra config;
vLLM's ``CachePolicyFactory.get_cache_policy_cls`` imports this class and
``CPUOffloadingManager`` runs it for the DRAM tier. The decisions are
:class:`~atom_tier.tiers.eviction.StickyCore`'s; this class keeps vLLM's ``ChunkStatus`` per
key and tells the core which chunks a transfer holds (``ref_cnt != 0``: not evictable).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from typing_extensions import override
from vllm.v1.kv_offload.base import OffloadKey, ReqContext
from vllm.v1.kv_offload.cpu.policies.base import CachePolicy, ChunkStatus, order_request_keys

from atom_tier.tiers.eviction import StickyCore


class StickyCachePolicy(CachePolicy):
    """Keeps a stable set of returning chunks; tries new ones LRU (see StickyCore)."""

    def __init__(self, cache_capacity: int) -> None:
        super().__init__(cache_capacity)
        self.chunks: dict[OffloadKey, ChunkStatus] = {}
        self.core: StickyCore[OffloadKey] = StickyCore(cache_capacity)

    @override
    def get(self, key: OffloadKey) -> ChunkStatus | None:
        return self.chunks.get(key)

    @override
    def insert(self, key: OffloadKey, chunk: ChunkStatus) -> None:
        self.chunks[key] = chunk
        self.core.insert(key, pinned=chunk.ref_cnt != 0)

    @override
    def remove(self, key: OffloadKey) -> None:
        del self.chunks[key]
        self.core.remove(key)

    @override
    def touch(self, keys: Iterable[OffloadKey], req_context: ReqContext) -> None:
        used = list(keys)
        self.core.request_finished(used, set(used))

    @override
    def on_store_miss(self, keys: Iterable[OffloadKey], req_context: ReqContext) -> None:
        self.core.store_miss(keys)

    @override
    def on_request_finished(
        self,
        key_groups: Sequence[Sequence[OffloadKey]],
        insertion_only_keys: set[OffloadKey],
        reused_keys: set[OffloadKey],
        req_context: ReqContext,
    ) -> None:
        self.core.request_finished(order_request_keys(key_groups, req_context), reused_keys)

    @override
    def evict(
        self, n: int, protected: set[OffloadKey]
    ) -> list[tuple[OffloadKey, ChunkStatus]] | None:
        victims = self.core.evict(n, protected)
        if victims is None:
            return None
        return [(key, self.chunks.pop(key)) for key in victims]

    @override
    def clear(self) -> None:
        self.chunks.clear()
        self.core.clear()

    @override
    def mark_evictable(self, key: OffloadKey) -> None:
        self.core.mark_evictable(key)

    @override
    def mark_non_evictable(self, key: OffloadKey) -> None:
        self.core.mark_non_evictable(key)
