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
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typing_extensions import override
from vllm.v1.kv_offload.base import Locality, LookupResult, OffloadKey, ReqContext

from atom_tier.log import get_logger
from atom_tier.tiers.chunk_format import FORMAT_VERSION
from atom_tier.tiers.model_identity import ModelIdentity, model_identity
from atom_tier.tiers.nvme_store import NvmeChunkStore
from atom_tier.tiers.store_tier import StoreBackedTier
from atom_tier.tiers.tier_stats import COUNTER_NAMES, GAUGE_NAMES

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


class AtomTierNvmeTier(StoreBackedTier):
    """Secondary tier on local disk: capped, LRU-evicting, checksummed, restart-persistent."""

    what = "NVMe tier"
    metric_prefix = METRIC_PREFIX
    counter_names = COUNTER_NAMES
    gauge_names = GAUGE_NAMES
    store: NvmeChunkStore

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
        logger.info("atom-tier NVMe tier (%s) at %s", tier_type, root)
        logger.info("atom-tier NVMe tier model identity %s", self.identity.describe())
        if self.identity.source == "unverified":
            logger.warning(
                "atom-tier could not fingerprint the weights: chunks written by this run are "
                "never served after a restart; set ATOM_TIER_WEIGHTS_ID to a version of the "
                "weights to keep them"
            )

    @override
    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        return LookupResult.HIT if self.store.lookup(key) else LookupResult.MISS

    @override
    def touch(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        self.store.touch(keys)

    def tier_usage(self) -> tuple[int, int]:
        """(bytes on disk, cap): what the connector's per-tier usage gauges report."""
        return self.store.index.used_bytes, self.store.index.capacity_bytes
