"""StoreBackedTier: what every atom-tier secondary tier does the same way around its store.

A tier's store (``NvmeChunkStore``, ``SharedChunkStore``) takes (key, DRAM-tier row) pairs and
returns concurrent futures; this base turns vLLM's transfer jobs into those calls and the
futures back into ``JobResult``s, publishes KV events for chunks stored, and reports the
store's counters as vLLM metrics. Subclasses add their lookups and say what their store is.
Everything here runs on the scheduler thread except the ``*_done`` callbacks (I/O threads),
which only append to deques.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from typing_extensions import override
from vllm.distributed.kv_transfer.kv_connector.v1.offloading.metrics import (
    OffloadingConnectorStats,
)
from vllm.v1.kv_offload.base import (
    Medium,
    OffloadingEvent,
    OffloadingMetricMetadata,
    OffloadKey,
    ReqContext,
    RequestOffloadingContext,
)
from vllm.v1.kv_offload.tiering.base import JobResult, SecondaryTierManager, TransferJob

from atom_tier.log import get_logger
from atom_tier.tiers.tier_metrics import StatsReporter, metric_definitions
from atom_tier.tiers.tier_stats import WriteReport

if TYPE_CHECKING:
    from vllm.v1.kv_offload.base import OffloadingSpec
    from vllm.v1.kv_offload.tiering.backpressure import BackpressureDetector

logger = get_logger(__name__)


class ChunkStore(Protocol):
    """What a tier's store offers the tier (no vLLM types: keys are bytes)."""

    def submit_writes(self, items: Sequence[tuple[bytes, memoryview]]) -> Future[WriteReport]: ...

    def submit_reads(self, items: Sequence[tuple[bytes, memoryview]]) -> Future[list[bool]]: ...

    def drain(self) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, float]: ...


class StoreBackedTier(SecondaryTierManager):
    """Transfers, events and metrics of a secondary tier over a :class:`ChunkStore`.

    Subclasses set ``store`` in their ``__init__`` and the class attributes below.
    """

    medium: ClassVar[Medium] = Medium.STORAGE
    what: ClassVar[str]  # "NVMe tier": log lines and metric help texts
    metric_prefix: ClassVar[str]
    counter_names: ClassVar[tuple[str, ...]]
    gauge_names: ClassVar[tuple[str, ...]]
    store: ChunkStore

    def __init__(
        self,
        offloading_spec: OffloadingSpec,
        primary_kv_view: memoryview,
        tier_type: str,
        backpressure_detector: BackpressureDetector | None = None,
    ) -> None:
        super().__init__(offloading_spec, primary_kv_view, tier_type, backpressure_detector)
        self._flat = primary_kv_view.cast("B")
        self._finished: deque[JobResult] = deque()
        self._open_jobs = 0
        self._reporter = StatsReporter(self.metric_prefix, self.counter_names, self.gauge_names)
        # KV events (chunks stored) for KV-aware routers, when vLLM's KV events are on.
        self._publish_events = offloading_spec.kv_events_config.enable_kv_cache_events
        self._events: deque[OffloadingEvent] = deque()

    @override
    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        return RequestOffloadingContext()

    def on_failed_load(self, keys: list[OffloadKey]) -> None:
        """Called on an I/O thread with the keys a load could not deliver."""
        return

    # -- transfers -------------------------------------------------------------------------
    def _items(self, keys: list[OffloadKey], job: TransferJob) -> list[tuple[bytes, memoryview]]:
        size = self.block_size_bytes
        return [
            (bytes(k), self._flat[int(c) * size : (int(c) + 1) * size])
            for k, c in zip(keys, job.chunk_ids, strict=True)
        ]

    @override
    def submit_store(self, job_metadata: TransferJob) -> None:
        keys = list(job_metadata.keys)
        start = time.monotonic()
        future = self.store.submit_writes(self._items(keys, job_metadata))
        self._open_jobs += 1
        future.add_done_callback(lambda f: self._store_done(job_metadata.job_id, keys, start, f))

    def _store_done(
        self, job_id: int, keys: list[OffloadKey], start: float, future: Future[WriteReport]
    ) -> None:
        try:
            report = future.result()
        except Exception:  # never expected: the stores turn every failure into the report
            logger.exception("%s store job %s failed", self.what, job_id)
            report = WriteReport(failed=len(keys))
        if report.ok and report.written and self._publish_events:
            self._events.append(OffloadingEvent(keys, self.medium, False, self.locality))
        self._finished.append(
            JobResult(
                job_id,
                report.ok,
                transfer_time=time.monotonic() - start,
                transfer_bytes=report.written_bytes,
            )
        )

    @override
    def submit_load(self, job_metadata: TransferJob) -> None:
        keys = list(job_metadata.keys)
        start = time.monotonic()
        future = self.store.submit_reads(self._items(keys, job_metadata))
        self._open_jobs += 1
        future.add_done_callback(lambda f: self._load_done(job_metadata.job_id, keys, start, f))

    def _load_done(
        self, job_id: int, keys: list[OffloadKey], start: float, future: Future[list[bool]]
    ) -> None:
        try:
            results = future.result()
        except Exception:  # never expected: the stores turn every failure into a miss
            logger.exception("%s load job %s failed", self.what, job_id)
            results = [False] * len(keys)
        loaded = [k for k, ok in zip(keys, results, strict=True) if ok]
        success = len(loaded) == len(keys)
        if not success:
            self.on_failed_load([k for k, ok in zip(keys, results, strict=True) if not ok])
        self._finished.append(
            JobResult(
                job_id,
                success,
                # A failed key is never reported loaded: its DRAM slot may hold garbage.
                successful_keys=None if success else tuple(loaded),
                transfer_time=time.monotonic() - start,
                transfer_bytes=len(loaded) * self.block_size_bytes,
            )
        )

    @override
    def get_finished_jobs(self) -> Iterable[JobResult]:
        # popleft is atomic: a result appended by an I/O thread meanwhile waits for the next call.
        results = [self._finished.popleft() for _ in range(len(self._finished))]
        self._open_jobs -= len(results)
        return results

    @override
    def has_pending_work(self) -> bool:
        return self._open_jobs > 0

    @override
    def drain_jobs(self) -> None:
        self.store.drain()

    @override
    def take_events(self) -> Iterable[OffloadingEvent]:
        return [self._events.popleft() for _ in range(len(self._events))]

    @override
    def shutdown(self) -> None:
        self.store.close()

    # -- metrics ---------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        """Plain snapshot of the store's counters and gauges."""
        return self.store.stats()

    @classmethod
    @override
    def build_metric_definitions(
        cls, extra_config: dict[str, Any]
    ) -> dict[str, OffloadingMetricMetadata]:
        return metric_definitions(cls.metric_prefix, cls.what, cls.counter_names, cls.gauge_names)

    @override
    def get_stats(self) -> OffloadingConnectorStats | None:
        return self._reporter.report(self.store.stats())
