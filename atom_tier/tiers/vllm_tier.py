"""AtomTierNvmeTier: the NVMe chunk store behind vLLM 0.32's ``TieringOffloadingSpec``.

vLLM builds secondary tiers from ``secondary_tiers: [{"type": ..., "module_path": ...}]``;
``atom_tier.tiers.nvme_secondary_tier_config`` produces this tier's entry (no registration
needed: the factory imports ``type`` from ``module_path``). All calls arrive on the scheduler
thread and stay non-blocking: they touch the store's in-memory index and hand I/O to its threads.

Demotion is vLLM's cascade: a chunk is written when it is stored into the DRAM tier
(write-on-store), not when DRAM evicts it. The contract leaves no other choice without a
copy: when DRAM evicts, ``prepare_store`` hands the slot straight to the next GPU->DRAM
transfer, so the evicted bytes are gone before a tier could read them. Chunks already on disk
are not written again (the index dedupes), so each distinct chunk costs one disk write while
it stays within the cap. The write amplification of both policies is measured by
``bench/nvme_demotion.py`` (docs/benchmarks.md, "NVMe tier").
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
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
)
from vllm.v1.kv_offload.tiering.base import JobResult, SecondaryTierManager, TransferJob

from atom_tier.log import get_logger
from atom_tier.tiers.chunk_format import FORMAT_VERSION
from atom_tier.tiers.model_identity import ModelIdentity, model_identity
from atom_tier.tiers.nvme_store import NvmeChunkStore
from atom_tier.tiers.tier_metrics import StatsReporter, metric_definitions
from atom_tier.tiers.tier_stats import COUNTER_NAMES, GAUGE_NAMES, WriteReport

if TYPE_CHECKING:
    from vllm.v1.kv_offload.base import OffloadingSpec
    from vllm.v1.kv_offload.tiering.backpressure import BackpressureDetector

logger = get_logger(__name__)

METRIC_PREFIX = "atom_tier:nvme_tier_"


def namespace_of(
    offloading_spec: OffloadingSpec, chunk_bytes: int, identity: str, *, scope_name: bool = True
) -> tuple[str, bytes]:
    """(directory name, namespace) identifying what a chunk's bytes mean.

    Two servers share chunks only when model identity (weights and numerics, see
    :mod:`atom_tier.tiers.model_identity`), KV dtype, layout, chunking and parallelism agree:
    the same tokens hash to the same key under other weights, so neither the key nor the
    model's name may select a chunk. The namespace is also written into every chunk header.
    ``scope_name=False`` leaves the served name (often a local path) out, for a tier shared by
    replicas that mount the same weights at different paths: the identity already fixes them.
    """
    config = offloading_spec.config
    parallel = config.parallel
    fields = {
        "format": FORMAT_VERSION,
        "model": config.model.name if scope_name else "",
        "identity": identity,
        "kv_dtype": str(config.model.dtype),
        "tokens_per_hash": config.cache.tokens_per_hash,
        "blocks_per_chunk": config.cache.blocks_per_chunk,
        "groups": [[g.tokens_per_block, list(g.layer_names)] for g in config.groups],
        "parallel": [parallel.tp_size, parallel.pp_size, parallel.pcp_size, parallel.dcp_size],
        "replicated_layout": bool(config.replicated_layout),
        "canonical_layout": bool(config.canonical_layout),
        "kv_cache_layout": config.kv_cache_layout,
        "chunk_bytes": chunk_bytes,
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    safe_model = "".join(c if c.isalnum() or c in "-._" else "_" for c in config.model.name)
    return f"{safe_model[-64:]}_{digest}", digest.encode()


def resolve_identity(entry: Mapping[str, Any] | None, tier: str = "NVMe") -> ModelIdentity:
    """The model identity a tier entry asks for; a random one (nothing reused) without it."""
    if entry is None:
        logger.warning(
            "The %s tier entry has no model_identity (atom-tier fills it in when it builds "
            "secondary_tiers): this run's chunks get a random namespace and are never reused",
            tier,
        )
        return ModelIdentity(secrets.token_hex(32), "unverified")
    return model_identity(**entry)


class AtomTierNvmeTier(SecondaryTierManager):
    """Secondary tier on local disk: capped, LRU-evicting, checksummed, restart-persistent."""

    medium: ClassVar[Medium] = Medium.STORAGE

    def __init__(
        self,
        offloading_spec: OffloadingSpec,
        primary_kv_view: memoryview,
        tier_type: str,
        root_dir: str,
        capacity_bytes: int | None = None,
        engine: str = "auto",
        io_threads: int = 8,
        fault_retry_s: float = 60.0,
        locality: str | None = None,
        model_identity: Mapping[str, Any] | None = None,
        backpressure_detector: BackpressureDetector | None = None,
    ) -> None:
        super().__init__(offloading_spec, primary_kv_view, tier_type, backpressure_detector)
        self.locality = Locality(locality) if locality else Locality.LOCAL
        self._flat = primary_kv_view.cast("B")
        self.identity = resolve_identity(model_identity)
        dirname, namespace = namespace_of(
            offloading_spec, self.block_size_bytes, self.identity.digest
        )
        parallel = offloading_spec.config.parallel
        root = Path(root_dir) / dirname
        share = 1.0
        if parallel.data_parallel_size > 1:
            # Each DP replica has its own scheduler and so its own tier: split dir and cap.
            root = root / f"dp{parallel.data_parallel_index}"
            share = 1 / parallel.data_parallel_size
            if capacity_bytes is not None:
                capacity_bytes = int(capacity_bytes * share)
        self.store = NvmeChunkStore(
            root,
            capacity_bytes,
            namespace=namespace,
            engine=engine,
            io_threads=io_threads,
            fault_retry_s=fault_retry_s,
            auto_share=share,
        )
        self._finished: deque[JobResult] = deque()
        self._open_jobs = 0
        self._reporter = StatsReporter(METRIC_PREFIX, COUNTER_NAMES, GAUGE_NAMES)
        # KV events (chunks stored) for routers, when vLLM's KV events are on.
        self._publish_events = offloading_spec.kv_events_config.enable_kv_cache_events
        self._events: deque[OffloadingEvent] = deque()
        logger.info("atom-tier NVMe tier (%s) at %s", tier_type, root)
        logger.info("atom-tier NVMe tier model identity %s", self.identity.describe())
        if self.identity.source == "unverified":
            logger.warning(
                "atom-tier could not fingerprint the weights: chunks written by this run are "
                "never served after a restart; set ATOM_TIER_WEIGHTS_ID to a version of the "
                "weights to keep them"
            )

    # -- lookups ---------------------------------------------------------------------------
    @override
    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        return LookupResult.HIT if self.store.lookup(key) else LookupResult.MISS

    @override
    def touch(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        self.store.touch(keys)

    @override
    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        return RequestOffloadingContext()

    # -- transfers -------------------------------------------------------------------------
    def _row(self, chunk_id: int) -> memoryview:
        start = int(chunk_id) * self.block_size_bytes
        return self._flat[start : start + self.block_size_bytes]

    @override
    def submit_store(self, job_metadata: TransferJob) -> None:
        items = [
            (bytes(key), self._row(cid))
            for key, cid in zip(job_metadata.keys, job_metadata.chunk_ids, strict=True)
        ]
        start = time.monotonic()
        future = self.store.submit_writes(items)
        self._open_jobs += 1
        keys = list(job_metadata.keys)
        future.add_done_callback(lambda f: self._store_done(job_metadata.job_id, keys, start, f))

    def _store_done(
        self, job_id: int, keys: list[OffloadKey], start: float, future: Future[WriteReport]
    ) -> None:
        try:
            report = future.result()
            ok, nbytes = report.ok, report.written_bytes
        except Exception:  # never expected: the store turns I/O errors into reports
            logger.exception("NVMe tier store job %s failed", job_id)
            ok, nbytes = False, 0
        if ok and self._publish_events and report.written:
            self._events.append(OffloadingEvent(keys, self.medium, False, self.locality))
        self._finished.append(
            JobResult(job_id, ok, transfer_time=time.monotonic() - start, transfer_bytes=nbytes)
        )

    @override
    def submit_load(self, job_metadata: TransferJob) -> None:
        keys = [bytes(k) for k in job_metadata.keys]
        items = [(k, self._row(c)) for k, c in zip(keys, job_metadata.chunk_ids, strict=True)]
        start = time.monotonic()
        future = self.store.submit_reads(items)
        self._open_jobs += 1
        original = list(job_metadata.keys)
        future.add_done_callback(lambda f: self._load_done(job_metadata.job_id, original, start, f))

    def _load_done(
        self, job_id: int, keys: list[OffloadKey], start: float, future: Future[list[bool]]
    ) -> None:
        try:
            results = future.result()
        except Exception:
            logger.exception("NVMe tier load job %s failed", job_id)
            results = [False] * len(keys)
        loaded = [k for k, ok in zip(keys, results, strict=True) if ok]
        success = len(loaded) == len(keys)
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
        results = []
        while self._finished:
            results.append(self._finished.popleft())
        self._open_jobs -= len(results)
        return results

    @override
    def has_pending_work(self) -> bool:
        return self._open_jobs > 0

    @override
    def drain_jobs(self) -> None:
        self.store.drain()

    @override
    def shutdown(self) -> None:
        self.store.close()

    # -- metrics ---------------------------------------------------------------------------
    def tier_usage(self) -> tuple[int, int]:
        """(bytes on disk, cap): what the connector's per-tier usage gauges report."""
        return self.store.index.used_bytes, self.store.index.capacity_bytes

    def stats(self) -> dict[str, float]:
        """Plain snapshot of the tier's counters and gauges (see ``tier_stats``)."""
        return self.store.stats()

    @classmethod
    @override
    def build_metric_definitions(
        cls, extra_config: dict[str, Any]
    ) -> dict[str, OffloadingMetricMetadata]:
        return metric_definitions(METRIC_PREFIX, "NVMe tier", COUNTER_NAMES, GAUGE_NAMES)

    @override
    def get_stats(self) -> OffloadingConnectorStats | None:
        return self._reporter.report(self.store.stats())

    @override
    def take_events(self) -> Iterable[OffloadingEvent]:
        # Appended by I/O threads; popleft is atomic, so none is lost or taken twice.
        return [self._events.popleft() for _ in range(len(self._events))]
