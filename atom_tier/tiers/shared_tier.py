"""AtomTierSharedTier: the Valkey/Redis chunk store behind vLLM 0.32's ``TieringOffloadingSpec``.

vLLM's tier factory imports this class from the ``secondary_tiers`` entry that
``atom_tier.tiers.shared_secondary_tier_config`` builds. The entry carries no address and no
secret: vLLM logs its configuration, so the URL (with its password) and the signing secret are
read from atom-tier's settings here, in the engine core, and only ever printed redacted.

Lookups never wait on the network on the scheduler thread: vLLM's ``AsyncLookupManager``
collects a step's keys, one background thread checks them (pipelined, per request, stopping at
the first hole) while the model runs, and the scheduler sees RETRY until the answer is in.
Stores and loads run on the store's I/O threads. The tier shares chunks with every replica
whose model identity (weights fingerprint and numerics), KV layout, chunking and signing key
match; the served name is left out, so replicas may mount the weights at different paths.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, ClassVar

from typing_extensions import override
from vllm.distributed.kv_transfer.kv_connector.v1.offloading.metrics import (
    OffloadingConnectorStats,
)
from vllm.v1.kv_offload.base import (
    Locality,
    LookupResult,
    Medium,
    OffloadingEvent,
    OffloadingMetricMetadata,
    OffloadKey,
    ReqContext,
    RequestOffloadingContext,
    ScheduleEndContext,
)
from vllm.v1.kv_offload.tiering.async_lookup import AsyncLookupManager
from vllm.v1.kv_offload.tiering.base import JobResult, SecondaryTierManager, TransferJob
from vllm.v1.metrics.cache_hit_source import CacheHitSource

from atom_tier.log import get_logger
from atom_tier.settings import load_settings, variable_of
from atom_tier.tiers.shared_store import SHARED_COUNTER_NAMES, SHARED_GAUGE_NAMES, SharedChunkStore
from atom_tier.tiers.shared_url import parse_shared_url
from atom_tier.tiers.shared_value import load_signer
from atom_tier.tiers.tier_metrics import StatsReporter, metric_definitions
from atom_tier.tiers.tier_stats import WriteReport
from atom_tier.tiers.vllm_tier import namespace_of, resolve_identity

if TYPE_CHECKING:
    from vllm.v1.kv_offload.base import OffloadingSpec
    from vllm.v1.kv_offload.tiering.backpressure import BackpressureDetector

logger = get_logger(__name__)

METRIC_PREFIX = "atom_tier:shared_tier_"


class _SharedLookups(AsyncLookupManager):
    """vLLM's async lookup manager over the store's pipelined existence checks."""

    def __init__(self, store: SharedChunkStore, tier_type: str) -> None:
        super().__init__(tier_type=tier_type)
        self._store = store

    @override
    def batch_lookup(self, keys: list[OffloadKey], req_context: ReqContext) -> Iterable[bool]:
        return self._store.exists_prefix([bytes(key) for key in keys])


class AtomTierSharedTier(SecondaryTierManager):
    """Secondary tier in a Valkey/Redis server or cluster shared by every replica."""

    medium: ClassVar[Medium] = Medium.STORAGE
    # vLLM has no "shared" source; its fallback for a remote store is external_unspecified.
    cache_hit_source: ClassVar[CacheHitSource] = CacheHitSource.EXTERNAL_UNSPECIFIED

    def __init__(
        self,
        offloading_spec: OffloadingSpec,
        primary_kv_view: memoryview,
        tier_type: str,
        model_identity: Mapping[str, Any] | None = None,
        io_threads: int = 4,
        backpressure_detector: BackpressureDetector | None = None,
    ) -> None:
        super().__init__(offloading_spec, primary_kv_view, tier_type, backpressure_detector)
        self.locality = Locality.REMOTE
        self._flat = primary_kv_view.cast("B")
        settings = load_settings()
        if settings.shared_url is None:
            raise ValueError("the shared tier needs ATOM_TIER_SHARED_URL")
        target = parse_shared_url(settings.shared_url, variable_of("shared_url"))
        signer = load_signer(settings)
        self.identity = resolve_identity(model_identity, "shared")
        _, namespace = namespace_of(
            offloading_spec, self.block_size_bytes, self.identity.digest, scope_name=False
        )
        if signer is not None:  # signed chunks live apart: see shared_value
            namespace += b"-" + signer.key_id.encode()
        self.store = SharedChunkStore(
            target,
            namespace,
            prefix=settings.shared_prefix,
            signer=signer,
            timeout_s=settings.shared_timeout_s,
            io_threads=io_threads,
        )
        self._lookups = _SharedLookups(self.store, tier_type)
        self._finished: deque[JobResult] = deque()
        self._failed_loads: deque[list[OffloadKey]] = deque()
        self._open_jobs = 0
        self._reporter = StatsReporter(METRIC_PREFIX, SHARED_COUNTER_NAMES, SHARED_GAUGE_NAMES)
        self._publish_events = offloading_spec.kv_events_config.enable_kv_cache_events
        self._events: deque[OffloadingEvent] = deque()
        logger.info(
            "atom-tier shared tier (%s) at %s, key prefix %s:%s, model identity %s%s",
            *(tier_type, target.display, settings.shared_prefix, namespace.decode()),
            self.identity.describe(),
            ", chunks signed" if signer else "",
        )

    # -- lookups ---------------------------------------------------------------------------
    @override
    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        found = self._lookups.lookup(key, req_context)
        if found is None:
            return LookupResult.RETRY
        return LookupResult.HIT if found else LookupResult.MISS

    @override
    def on_schedule_end(self, context: ScheduleEndContext) -> None:
        self._lookups.flush()

    @override
    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        return RequestOffloadingContext()

    @override
    def on_request_finished(self, req_context: ReqContext) -> None:
        self._lookups.cleanup(req_context.req_id)

    @override
    def touch(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        return  # the server's own LRU/LFU sees every read; a touch would cost a round trip

    # -- transfers -------------------------------------------------------------------------
    def _row(self, chunk_id: int) -> memoryview:
        start = int(chunk_id) * self.block_size_bytes
        return self._flat[start : start + self.block_size_bytes]

    def _items(self, keys: list[OffloadKey], job: TransferJob) -> list[tuple[bytes, memoryview]]:
        return [(bytes(k), self._row(c)) for k, c in zip(keys, job.chunk_ids, strict=True)]

    @override
    def submit_store(self, job_metadata: TransferJob) -> None:
        keys = list(job_metadata.keys)
        items = [
            (bytes(k), self._row(c)) for k, c in zip(keys, job_metadata.chunk_ids, strict=True)
        ]
        start = time.monotonic()
        self._open_jobs += 1
        future = self.store.submit_writes(items)
        future.add_done_callback(lambda f: self._store_done(job_metadata.job_id, keys, start, f))

    def _store_done(
        self, job_id: int, keys: list[OffloadKey], start: float, future: Future[WriteReport]
    ) -> None:
        try:
            report = future.result()
        except Exception:  # never expected: the store turns failures into reports
            logger.exception("Shared tier store job %s failed", job_id)
            report = WriteReport(failed=len(keys))
        if report.written and self._publish_events:
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
        items = [
            (bytes(k), self._row(c)) for k, c in zip(keys, job_metadata.chunk_ids, strict=True)
        ]
        start = time.monotonic()
        self._open_jobs += 1
        future = self.store.submit_reads(items)
        future.add_done_callback(lambda f: self._load_done(job_metadata.job_id, keys, start, f))

    def _load_done(
        self, job_id: int, keys: list[OffloadKey], start: float, future: Future[list[bool]]
    ) -> None:
        try:
            results = future.result()
        except Exception:  # never expected: the store turns failures into misses
            logger.exception("Shared tier load job %s failed", job_id)
            results = [False] * len(keys)
        loaded = [k for k, ok in zip(keys, results, strict=True) if ok]
        success = len(loaded) == len(keys)
        if not success:
            # Applied on the scheduler thread: cached HIT verdicts of these keys turn to MISS,
            # so the scheduler does not retry a load that cannot succeed.
            self._failed_loads.append([k for k, ok in zip(keys, results, strict=True) if not ok])
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
        while self._failed_loads:
            self._lookups.mark_miss(self._failed_loads.popleft())
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
        self._lookups.shutdown()
        self.store.close()

    # -- metrics ---------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        return self.store.stats()

    @classmethod
    @override
    def build_metric_definitions(
        cls, extra_config: dict[str, Any]
    ) -> dict[str, OffloadingMetricMetadata]:
        return metric_definitions(
            METRIC_PREFIX, "shared tier", SHARED_COUNTER_NAMES, SHARED_GAUGE_NAMES
        )

    @override
    def get_stats(self) -> OffloadingConnectorStats | None:
        return self._reporter.report(self.store.stats())
