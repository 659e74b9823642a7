"""atom-tier's offloading spec: vLLM's TieringOffloadingSpec with three changes.

* Scheduler side: the manager is vLLM's tiering manager wrapped to report atom-tier's extra
  per-tier metrics, and the region's /dev/shm name is dropped once it is mapped
  (:mod:`atom_tier.connector.region`).
* Worker side: vLLM's own ``create_worker`` on GPU platforms (its region adopted by
  :class:`AtomTierSharedRegion`); on the CPU platform (no streams, no host registration)
  atom-tier's :class:`HostCopyWorker` over the same region.
* Metric definitions: vLLM's plus atom-tier's (:mod:`atom_tier.connector.metrics`).

Configured through ``kv_connector_extra_config`` exactly like vLLM's spec (see
:mod:`atom_tier.connector.config` for how settings fill it in).
"""

from __future__ import annotations

from typing import Any

from typing_extensions import override
from vllm.platforms import current_platform
from vllm.v1.kv_offload.base import (
    CanonicalKVCaches,
    OffloadingManager,
    OffloadingMetricMetadata,
    OffloadingWorker,
)
from vllm.v1.kv_offload.config import OffloadingConfig
from vllm.v1.kv_offload.cpu.gpu_worker import CPUOffloadingWorker
from vllm.v1.kv_offload.tiering.manager import TieringOffloadingManager
from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec

from atom_tier.connector import metrics, vllm_compat
from atom_tier.connector.host_worker import HostCopyWorker
from atom_tier.connector.manager import MeteredTieringManager
from atom_tier.connector.region import AtomTierSharedRegion, drop_region_name, region_path
from atom_tier.log import get_logger

logger = get_logger(__name__)


def platform_has_device_copies() -> bool:
    """Whether vLLM's own offloading worker (CUDA/HIP/XPU streams) can run here."""
    return bool(current_platform.is_cuda_alike() or current_platform.is_xpu())


class AtomTierOffloadingSpec(TieringOffloadingSpec):
    """TieringOffloadingSpec with atom-tier's metrics, shm fix and CPU host-copy worker."""

    @classmethod
    @override
    def build_metric_definitions(
        cls, extra_config: dict[str, Any]
    ) -> dict[str, OffloadingMetricMetadata]:
        definitions = super().build_metric_definitions(extra_config)
        definitions.update(metrics.metric_definitions())
        return definitions

    def __init__(self, config: OffloadingConfig) -> None:
        super().__init__(config)
        if self.num_chunks == 0 and self.kv_bytes_per_chunk > 0:
            raise ValueError(
                f"the DRAM tier ({self.extra_config.get('cpu_bytes_to_use')} bytes) is smaller "
                f"than one chunk ({self.kv_bytes_per_chunk} bytes): raise ATOM_TIER_DRAM_GB "
                "(or cpu_bytes_to_use in kv_connector_extra_config)"
            )
        self._metered: MeteredTieringManager | None = None
        self._host_worker: OffloadingWorker | None = None

    # -- scheduler side --------------------------------------------------------------------
    @override
    def get_manager(self) -> OffloadingManager:
        if self._metered is None:
            # vLLM builds the scheduler after every worker has mapped the region, so the
            # scheduler normally joins an existing file and is the last to map it.
            engine_id = vllm_compat.spec_engine_id(self)
            workers_mapped = region_path(engine_id).exists()
            inner = super().get_manager()
            assert isinstance(inner, TieringOffloadingManager)
            if workers_mapped:
                drop_region_name(engine_id)
            else:
                logger.warning(
                    "The scheduler created %s before any worker mapped it; it is removed at "
                    "shutdown only",
                    region_path(engine_id),
                )
            self._metered = MeteredTieringManager(inner, self.kv_bytes_per_chunk)
        return self._metered

    # -- worker side -----------------------------------------------------------------------
    @override
    def get_worker(self, kv_caches: CanonicalKVCaches) -> OffloadingWorker:
        if platform_has_device_copies():
            return super().get_worker(kv_caches)  # vLLM's: one worker, from create_worker
        if self._host_worker is None:
            self._host_worker = self._build_host_worker(kv_caches)
        return self._host_worker

    @override
    def create_worker(self, kv_caches: CanonicalKVCaches) -> CPUOffloadingWorker:
        """vLLM's worker, its region adopted by :class:`AtomTierSharedRegion` (whose cleanup
        leaves alone the /dev/shm name the scheduler already dropped)."""
        worker = super().create_worker(kv_caches)
        region = vllm_compat.worker_region(worker)
        if region is not None:
            region.__class__ = AtomTierSharedRegion  # a subclass adding no state
        return worker

    def _build_host_worker(self, kv_caches: CanonicalKVCaches) -> OffloadingWorker:
        """atom-tier's host-copy worker over the same region (CPU platform: no streams)."""
        if self.config.canonical_layout:
            raise ValueError(
                "canonical_layout in kv_connector_extra_config is not supported by "
                "atom-tier's host-copy worker (CPU platform): remove it"
            )
        rank = 0 if self.replicated_layout else self.config.parallel.rank
        region = AtomTierSharedRegion(
            engine_id=vllm_compat.spec_engine_id(self),
            num_chunks=self.num_chunks,
            rank=rank,
            kv_bytes_per_chunk=self.kv_bytes_per_chunk,
            cpu_page_size=self.cpu_page_size_per_worker,
        )
        try:
            views = [
                region.create_next_worker_view(tensor.page_size_bytes * self.blocks_per_chunk)
                for tensor in kv_caches.tensors
            ]
            return HostCopyWorker(kv_caches, views, self.blocks_per_chunk, release=region.cleanup)
        except Exception:
            region.cleanup()
            raise
