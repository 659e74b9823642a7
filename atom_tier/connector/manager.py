"""Scheduler side of the tiered cache: vLLM's tiering manager, with atom-tier's metrics added.

All bookkeeping (which chunk lives in which tier, eviction, promotion from NVMe into DRAM) is
vLLM's ``TieringOffloadingManager``; this wrapper forwards every call to it unchanged and only
adds to the statistics it returns (see :mod:`atom_tier.connector.metrics`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from typing_extensions import override
from vllm.distributed.kv_transfer.kv_connector.v1.offloading.metrics import (
    OffloadingConnectorStats,
)
from vllm.v1.kv_offload.base import (
    LoadStoreSpec,
    LookupResult,
    OffloadingEvent,
    OffloadingManager,
    OffloadKey,
    PrepareStoreOutput,
    ReqContext,
    RequestOffloadingContext,
    ScheduleEndContext,
)
from vllm.v1.kv_offload.tiering.manager import TieringOffloadingManager
from vllm.v1.metrics.cache_hit_source import CacheHitSource

from atom_tier.connector import metrics, vllm_compat


def tier_label(index: int, tier_type: str) -> tuple[str]:
    """vLLM's ``tier`` label value of secondary tier ``index`` (0-based), e.g. ``1:fs``."""
    return (f"{index + 1}:{tier_type}",)


class MeteredTieringManager(OffloadingManager):
    """Forwards to a TieringOffloadingManager; adds per-tier misses and usage to its stats."""

    def __init__(self, inner: TieringOffloadingManager, dram_chunk_bytes: int) -> None:
        self.inner = inner
        self.dram_chunk_bytes = dram_chunk_bytes
        # (gauge name, labels) -> value last reported (see metrics.drop_unchanged_gauges).
        self._reported_gauges: dict[tuple[str, tuple[str, ...]], float] = {}

    # -- atom-tier's additions ---------------------------------------------------------------
    def dram_used_chunks(self) -> int:
        return vllm_compat.dram_tier_chunks(self.inner.primary_tier)[0]

    def dram_capacity_chunks(self) -> int:
        return vllm_compat.dram_tier_chunks(self.inner.primary_tier)[1]

    @override
    def get_stats(self) -> OffloadingConnectorStats | None:
        """vLLM's stats plus atom-tier's, without gauges that did not change; None if empty.

        Called every engine step. A non-empty result is shipped to the API server and observed
        into Prometheus there (before the step's tokens are streamed), and vLLM's DRAM tier sets
        its usage gauges every step, so every step used to carry a report. A gauge keeps its
        last value, so leaving an unchanged one out changes nothing visible.
        """
        stats = self.inner.get_stats() or OffloadingConnectorStats()
        metrics.add_misses(stats)
        metrics.set_usage(
            stats,
            metrics.DRAM_TIER_LABEL,
            self.dram_used_chunks() * self.dram_chunk_bytes,
            self.dram_capacity_chunks() * self.dram_chunk_bytes,
        )
        tiers = self.inner.secondary_tiers
        labels = [tier_label(i, t.tier_type) for i, t in enumerate(tiers)]
        for label, used, capacity in metrics.secondary_usage(tiers, labels):
            metrics.set_usage(stats, label, used, capacity)
        metrics.drop_unchanged_gauges(stats, self._reported_gauges)
        return None if stats.is_empty() else stats

    # -- plain forwarding ----------------------------------------------------------------------
    @override
    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        return self.inner.lookup(key, req_context)

    @override
    def get_load_source(self, key: OffloadKey, req_context: ReqContext) -> CacheHitSource:
        return self.inner.get_load_source(key, req_context)

    @override
    def prepare_load(self, keys: Collection[OffloadKey], req_context: ReqContext) -> LoadStoreSpec:
        return self.inner.prepare_load(keys, req_context)

    @override
    def touch(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        self.inner.touch(keys, req_context)

    @override
    def complete_load(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        self.inner.complete_load(keys, req_context)

    @override
    def prepare_store(
        self, keys: Collection[OffloadKey], req_context: ReqContext
    ) -> PrepareStoreOutput | None:
        return self.inner.prepare_store(keys, req_context)

    @override
    def complete_store(
        self, keys: Collection[OffloadKey], req_context: ReqContext, success: bool = True
    ) -> None:
        self.inner.complete_store(keys, req_context, success)

    @override
    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        return self.inner.on_new_request(req_context)

    @override
    def on_request_finished(self, req_context: ReqContext) -> None:
        self.inner.on_request_finished(req_context)

    @override
    def take_events(self) -> Iterable[OffloadingEvent]:
        return self.inner.take_events()

    @override
    def on_schedule_end(self, context: ScheduleEndContext) -> None:
        self.inner.on_schedule_end(context)

    @override
    def has_pending_work(self) -> bool:
        return self.inner.has_pending_work()

    @override
    def reset_cache(self) -> None:
        self.inner.reset_cache()

    @override
    def shutdown(self) -> None:
        self.inner.shutdown()
