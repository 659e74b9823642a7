"""Sizing arithmetic: KV bytes, tier budgets and their automatic sizes, and how sizes print.

Pure functions of numbers, settings and a ``VllmConfig`` (read, never changed); what they are
computed from is probed elsewhere (``atom_tier.preflight.probes``: /proc, cgroups, /dev/shm,
statvfs, the device count), so every process computes the same answer from the same facts.
Preflight, the connector, the NVMe tier, the LMCache engine's configuration and the planner
all size with these.

Sizes print in the unit that shows the number (GiB from 1 GiB up, MiB below, KiB below that),
and a value to type comes with the size it means: "at most 0" (an integer GiB count on an
8 MiB filesystem) or "at most 0.0068" told an operator nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from atom_tier.settings import AtomTierSettings

# Every *_GB setting counts 2**30 bytes, as LMCache's sizes do (recipes carry over unchanged).
GIB = 1024**3
MIB = 1024**2
# Automatic DRAM tier: this share of the memory the host (or the container's cgroup) allows,
# times the share of the node's GPUs this server uses, at most this share of /dev/shm (where
# vLLM's shared region lives).
AUTO_MEMORY_SHARE = 0.4
AUTO_SHM_SHARE = 0.5
# The automatic NVMe cap keeps this share of the filesystem free for everything else...
AUTO_RESERVE_FRACTION = 0.10
# ...and at least this much.
AUTO_RESERVE_MIN_BYTES = 4 * GIB
# Chunk files are whole multiples of this (O_DIRECT alignment).
NVME_ALIGNMENT = 4096

_UNITS = (("GiB", GIB), ("MiB", MIB), ("KiB", 1024))
# A typed value keeps this many significant digits: enough to land within 1 % of the size
# meant, few enough to type.
_SIGNIFICANT = 3


def human_size(n_bytes: float) -> str:
    """'23.25 GiB', '5.81 MiB', '512.00 KiB', '100 B': the largest unit the size reaches."""
    for unit, scale in _UNITS:
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{int(n_bytes)} B"


def gb_value(n_bytes: float, *, up: bool = False) -> str:
    """``n_bytes`` as a ``*_GB`` setting (GiB), 3 significant digits at most, never above
    ``n_bytes`` (never below with ``up``): a limit typed as shown still holds."""
    if n_bytes <= 0:
        return "0"
    exact = Decimal(int(n_bytes)) / Decimal(GIB)
    # Whole GiB are precise enough from 1000 GiB up; below, keep 3 significant digits.
    exponent = min(0, exact.adjusted() - (_SIGNIFICANT - 1))
    rounded = exact.quantize(Decimal(1).scaleb(exponent), ROUND_CEILING if up else ROUND_FLOOR)
    return format(rounded.normalize(), "f")


def gb_setting(n_bytes: float, *, up: bool = False) -> str:
    """'0.00567 (5.81 MiB)': the ``*_GB`` value to type (see :func:`gb_value`) and the size
    it gives."""
    value = gb_value(n_bytes, up=up)
    return f"{value} ({human_size(int(Decimal(value) * GIB))})"


# -- DRAM tier ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DramBudget:
    """What the automatic DRAM tier size is computed from (constant while the host runs, so
    every vLLM process of a server computes the same size)."""

    memory_limit: int | None
    shm_size: int | None
    shm_free: int | None = None


def auto_dram_tier_bytes(budget: DramBudget, device_share: float = 1.0) -> int:
    """Automatic DRAM tier size: 40% of the memory limit x this server's share of the node's
    GPUs, capped at half of /dev/shm. 0 when nothing is known."""
    candidates = []
    if budget.memory_limit is not None:
        candidates.append(budget.memory_limit * AUTO_MEMORY_SHARE * min(max(device_share, 0), 1))
    if budget.shm_size is not None:
        candidates.append(budget.shm_size * AUTO_SHM_SHARE)
    return int(min(candidates)) if candidates else 0


def dram_tier_bytes(settings: AtomTierSettings, budget: DramBudget, device_share: float) -> int:
    """The DRAM tier size settings ask for: explicit GiB (LMCache's unit), 0 off, or automatic."""
    size_gb = settings.dram_tier_gb
    if size_gb is None:
        return auto_dram_tier_bytes(budget, device_share)
    return int(size_gb * GIB)


@dataclass(frozen=True)
class DramRequirement:
    prefix_tokens: int
    concurrency: int
    bytes_per_token: int
    concurrency_reason: str

    @property
    def minimum_bytes(self) -> int:
        return self.prefix_tokens * self.concurrency * self.bytes_per_token

    def explain(self) -> str:
        return (
            f"{self.prefix_tokens} tokens (max-model-len in whole chunks) x {self.concurrency} "
            f"concurrent reloads ({self.concurrency_reason}) x {self.bytes_per_token} KV bytes "
            f"per token = {human_size(self.minimum_bytes)}"
        )


def dram_requirement(
    *,
    max_model_len: int,
    kv_bytes_per_token: int,
    max_num_seqs: int,
    chunk_tokens: int,
    device_kv_tokens: int | None = None,
    reload_concurrency: int | None = None,
) -> DramRequirement:
    """Minimum DRAM tier size: the largest reused prefix times the concurrent reloads."""
    prefix = math.ceil(max_model_len / chunk_tokens) * chunk_tokens
    if reload_concurrency:
        concurrency, reason = reload_concurrency, "ATOM_TIER_RELOAD_CONCURRENCY"
    elif device_kv_tokens:
        concurrency = max(1, min(max_num_seqs, device_kv_tokens // prefix))
        reason = (
            f"full-length prefixes the {device_kv_tokens}-token device KV cache holds, "
            f"at most --max-num-seqs {max_num_seqs}"
        )
    else:
        concurrency, reason = 1, "one prefix until the device KV cache size is known"
    return DramRequirement(prefix, concurrency, kv_bytes_per_token, reason)


def device_share(vllm_config: Any, devices_on_node: int | None) -> float:
    """Share of this node's GPUs one engine uses; 1.0 where the device count is unknown.

    Each engine (data-parallel rank) has its own DRAM tier: it is sized for its own GPUs.
    """
    if not devices_on_node or devices_on_node <= 0:
        return 1.0
    parallel = vllm_config.parallel_config
    used = parallel.world_size // max(getattr(parallel, "nnodes_within_dp", 1), 1)
    return min(1.0, max(used, 1) / devices_on_node)


# -- KV ----------------------------------------------------------------------------------------
def kv_token_bytes(
    layers: int, kv_heads: int, values_per_head: int, value_bytes: int, *, mla: bool = False
) -> int:
    """KV bytes one token takes: layers x KV heads x values per head x bytes per value, twice
    (K and V) except for MLA, which stores one latent (kv_heads 1, the latent's size)."""
    return layers * kv_heads * values_per_head * value_bytes * (1 if mla else 2)


def kv_bytes_per_token(vllm_config: Any) -> int:
    """KV bytes one token takes across all workers, from the model and cache config."""
    from vllm.utils.torch_utils import kv_cache_dtype_str_to_dtype

    model, parallel = vllm_config.model_config, vllm_config.parallel_config
    dtype = kv_cache_dtype_str_to_dtype(vllm_config.cache_config.cache_dtype, model)
    layers = model.get_num_layers_by_block_type(parallel, "attention")
    layers *= parallel.pipeline_parallel_size
    heads = model.get_num_kv_heads(parallel) * parallel.tensor_parallel_size
    return kv_token_bytes(
        layers, heads, model.get_head_size(), dtype.itemsize, mla=bool(model.use_mla)
    )


def device_kv_tokens(vllm_config: Any) -> int | None:
    cache = vllm_config.cache_config
    blocks = cache.num_gpu_blocks_override or cache.num_gpu_blocks
    return int(blocks * cache.block_size) if blocks and cache.block_size else None


# -- NVMe tier ---------------------------------------------------------------------------------
def nvme_capacity_bytes(nvme_gb: float | None) -> int | None:
    """The cap for a ``nvme_gb`` setting; None means sized automatically at tier start-up."""
    return None if nvme_gb is None else int(nvme_gb * GIB)


def auto_reserve(fs_bytes: int) -> int:
    """What automatic sizing leaves free for everything else on a filesystem of ``fs_bytes``."""
    return max(int(fs_bytes * AUTO_RESERVE_FRACTION), AUTO_RESERVE_MIN_BYTES)


def auto_capacity(
    free_bytes: int, fs_bytes: int, tier_bytes_on_disk: int, share: float = 1.0
) -> int:
    """What the tier holds plus the free space, minus a reserve for everything else, times
    ``share`` (stores splitting one filesystem), in whole alignment units (``NVME_ALIGNMENT``).

    reserve = max(10 % of the filesystem, 4 GiB), so the tier never takes the last space
    of a shared filesystem. Decided once at start-up: free space is not watched afterwards
    (a disk filled by others shows up as a write fault, which stops the tier's writes).
    Preflight calls this too, so its warning about a zero cap is the store's own arithmetic.
    """
    usable = max(0, free_bytes + tier_bytes_on_disk - auto_reserve(fs_bytes))
    return int(usable * share) // NVME_ALIGNMENT * NVME_ALIGNMENT
