"""The one place atom-tier touches vLLM's (and torch's) private names.

Everything here reads or sets something vLLM keeps private: an underscore attribute, an
underscore module, a file naming convention. A vLLM upgrade may move any of them, so each is
listed in :data:`PRIVATE_SYMBOLS` and ``tests/connector/test_vllm_compat.py`` checks every one
against the installed vLLM, naming the symbol that moved. Public vLLM API is imported where it
is used, not here.

vLLM is imported inside the functions: the platform classes import this module while vLLM is
still resolving its platform (see :mod:`atom_tier.policy`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class PrivateSymbol:
    """``owner`` is a module path, or ``module:Class``; ``name`` an attribute of it, set on
    instances where ``on_instance`` (found as ``self.<name>`` in the class's own source)."""

    owner: str
    name: str
    used_for: str
    on_instance: bool = False


PRIVATE_SYMBOLS: tuple[PrivateSymbol, ...] = (
    PrivateSymbol(
        "vllm.distributed.kv_transfer.kv_connector.factory:KVConnectorFactory",
        "_registry",
        "whether AtomTierConnector is registered (platform facts)",
    ),
    PrivateSymbol(
        "vllm.v1.kv_offload.cpu.manager:CPUOffloadingManager",
        "_num_chunks",
        "DRAM tier capacity in chunks (usage gauges)",
        on_instance=True,
    ),
    PrivateSymbol(
        "vllm.v1.kv_offload.cpu.manager:CPUOffloadingManager",
        "_get_num_free_chunks",
        "DRAM tier chunks in use (usage gauges)",
    ),
    PrivateSymbol(
        "vllm.v1.kv_offload.cpu.shared_offload_region:SharedOffloadRegion",
        "_creator",
        "whether a region's cleanup removes its /dev/shm file",
        on_instance=True,
    ),
    PrivateSymbol(
        "vllm.v1.kv_offload.tiering.spec:TieringOffloadingSpec",
        "_engine_id",
        "the engine whose /dev/shm region the spec maps",
        on_instance=True,
    ),
    PrivateSymbol(
        "vllm.v1.kv_offload.cpu.gpu_worker:CPUOffloadingWorker",
        "_mmap_region",
        "the region a GPU worker maps, adopted by AtomTierSharedRegion",
        on_instance=True,
    ),
    PrivateSymbol(
        "vllm._aiter_ops",
        "rocm_aiter_ops",
        "AITER's switches as vLLM read them (ROCm platform facts)",
    ),
    PrivateSymbol(
        "vllm._aiter_ops",
        "is_aiter_found_and_supported",
        "whether AITER is installed and supports the GPU (ROCm platform facts)",
    ),
    PrivateSymbol(
        "vllm.platforms.rocm",
        "_GCN_ARCH",
        "the GPU architecture (feature block)",
    ),
    PrivateSymbol(
        "torch.cpu",
        "_is_avx512_supported",
        "whether CPU attention can store an fp8 KV cache (CPU platform facts)",
    ),
    PrivateSymbol(
        "torch.cpu",
        "_is_amx_tile_supported",
        "whether CPU attention can store an fp8 KV cache (CPU platform facts)",
    ),
)


# -- connector factory ------------------------------------------------------------------------
def registered_connectors() -> Collection[str]:
    """Names in vLLM's KV connector factory."""
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    registry: dict[str, Any] = getattr(KVConnectorFactory, "_registry", {})
    return registry.keys()


# -- the DRAM tier (vLLM's CPU offloading manager) --------------------------------------------
def dram_tier_chunks(primary_tier: Any) -> tuple[int, int]:
    """(chunks in use, capacity in chunks) of vLLM's DRAM tier manager.

    Chunks never handed out or back on the free list hold nothing; the rest hold KV (ready or
    being written). vLLM keeps its pool private; this is its own arithmetic.
    """
    capacity = int(primary_tier._num_chunks)
    return capacity - int(primary_tier._get_num_free_chunks()), capacity


# -- the DRAM tier's shared memory region -----------------------------------------------------
def region_path(engine_id: str) -> Path:
    """The file vLLM's SharedOffloadRegion maps for an engine (vLLM's naming)."""
    return SHM_DIR / f"vllm_offload_{engine_id}.mmap"


def spec_engine_id(spec: Any) -> str:
    """The engine id a TieringOffloadingSpec names its region after."""
    return str(spec._engine_id)


def region_unlinks_at_cleanup(region: Any) -> bool:
    return bool(getattr(region, "_creator", False))


def keep_region_file(region: Any) -> None:
    """Make a region's cleanup leave the /dev/shm name alone (it is gone or not its own)."""
    region._creator = False


def worker_region(worker: Any) -> Any:
    """The SharedOffloadRegion a vLLM CPUOffloadingWorker maps (None without one)."""
    return getattr(worker, "_mmap_region", None)


# -- ROCm --------------------------------------------------------------------------------------
def rocm_aiter_ops() -> Any:
    """vLLM's view of AITER's switches (``vllm._aiter_ops.rocm_aiter_ops``)."""
    from vllm._aiter_ops import rocm_aiter_ops as ops

    return ops


def aiter_found_and_supported() -> bool:
    from vllm._aiter_ops import is_aiter_found_and_supported

    return bool(is_aiter_found_and_supported())


def rocm_gcn_arch() -> str | None:
    """The GPU architecture vLLM's ROCm platform read at import (e.g. ``gfx942:...``)."""
    from vllm.platforms import rocm as vllm_rocm

    arch = getattr(vllm_rocm, "_GCN_ARCH", None)
    return str(arch) if arch else None


# -- CPU ---------------------------------------------------------------------------------------
def cpu_has_fp8_kv_isa() -> bool:
    """Whether this x86 CPU has the instructions vLLM's CPU attention needs for fp8 KV."""
    import torch

    return bool(torch.cpu._is_avx512_supported() or torch.cpu._is_amx_tile_supported())
