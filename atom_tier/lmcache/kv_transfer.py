"""The ``kv_transfer_config`` for vLLM's ``LMCacheConnectorV1`` (engine ``lmcache``).

``lmcache_kv_transfer_config(settings, vllm_config)`` is what the platform policy puts into
``VllmConfig.kv_transfer_config`` when ``ATOM_TIER_CONNECTOR=lmcache`` and the operator gave no
``--kv-transfer-config``: vLLM's own connector class (registered by vLLM under this name, so no
module path is needed), role ``kv_both``, and LMCache's configuration as ``lmcache.*``
extra-config keys (see :mod:`atom_tier.lmcache.config` for why that mechanism). It runs once,
in the process that builds the ``VllmConfig``; workers receive the result with the config.

This module does the probing the pure translation needs: host memory (or the cgroup limit),
the GPUs on this node, the free space of the disk tier, and the server's worker count.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from atom_tier.lmcache.config import (
    DEFAULT_HASH_ALGORITHM,
    HostShare,
    LMCacheConfig,
    lmcache_config,
)
from atom_tier.names import KV_ROLE, LMCACHE_CONNECTOR
from atom_tier.settings import AtomTierSettings
from atom_tier.sizing import DramBudget, auto_capacity, auto_dram_tier_bytes, device_share
from atom_tier.tiers.host import probe_devices_on_node, probe_dram_budget


def local_workers(vllm_config: Any | None) -> int:
    """GPU workers of this server on this host: one LMCache engine each."""
    if vllm_config is None:
        return 1
    parallel = vllm_config.parallel_config
    return max(1, int(getattr(parallel, "local_world_size", parallel.world_size)))


def gpus_on_node() -> int:
    """Devices torch sees (HIP devices on ROCm); 1 where there is no GPU or no torch."""
    try:
        import torch

        return max(1, int(torch.cuda.device_count()))
    except Exception:  # no torch, or a driver error: size as for a single-GPU host
        return 1


def auto_disk_bytes(path: Path) -> int | None:
    """The automatic disk cap of the native NVMe tier, for the same directory."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return auto_capacity(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, 0) or None


def probe_host_share(settings: AtomTierSettings, vllm_config: Any | None = None) -> HostShare:
    """Probe what the LMCache sizes are computed from; without a VllmConfig (``doctor``) the
    server is assumed to use one GPU of this node."""
    workers = local_workers(vllm_config)
    if vllm_config is not None:
        share = device_share(vllm_config, probe_devices_on_node())
    else:
        share = 1.0 / gpus_on_node()
    # LMCache pins its own host buffers: /dev/shm does not bound them (unlike vLLM's region).
    memory = DramBudget(probe_dram_budget().memory_limit, shm_size=None)
    auto_cpu = auto_dram_tier_bytes(memory, share) if settings.dram_tier_gb is None else None
    auto_disk = None
    if settings.nvme_enabled and settings.nvme_gb is None and settings.nvme_path is not None:
        auto_disk = auto_disk_bytes(settings.nvme_path)
    return HostShare(workers=workers, auto_cpu_bytes=auto_cpu, auto_disk_bytes=auto_disk)


def hash_algorithm(vllm_config: Any | None) -> str:
    """vLLM's prefix-cache hash function, which LMCache then uses for its chunk keys."""
    cache = getattr(vllm_config, "cache_config", None)
    algorithm = getattr(cache, "prefix_caching_hash_algo", None)
    return str(algorithm) if algorithm else DEFAULT_HASH_ALGORITHM


def resolve_lmcache_config(
    settings: AtomTierSettings, vllm_config: Any | None = None
) -> LMCacheConfig:
    """The LMCache configuration this host and server get (raises LMCacheConfigError)."""
    return lmcache_config(
        settings, probe_host_share(settings, vllm_config), hash_algorithm(vllm_config)
    )


def lmcache_kv_transfer_config(
    settings: AtomTierSettings, vllm_config: Any | None = None
) -> dict[str, Any]:
    """``KVTransferConfig(**result)`` selects LMCache configured from atom-tier's settings.

    Pass the ``VllmConfig`` being built when there is one: sizes are split over its workers
    and the chunk hash follows its ``prefix_caching_hash_algo``. Raises LMCacheConfigError
    (naming the setting) when the settings leave LMCache nothing to run with.
    """
    config = resolve_lmcache_config(settings, vllm_config)
    return {
        "kv_connector": LMCACHE_CONNECTOR,
        "kv_role": KV_ROLE,
        "kv_connector_extra_config": config.extra_config(),
    }
