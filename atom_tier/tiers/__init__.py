"""Storage tiers of atom-tier's KV cache: the NVMe chunk store and its vLLM adapter.

The connector puts :func:`nvme_secondary_tier_config` into its ``TieringOffloadingSpec``'s
``secondary_tiers``. vLLM's tier factory imports the class named by ``type`` from
``module_path``, so no registration step is needed in any process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atom_tier.settings import AtomTierSettings

# LMCache's LMCACHE_MAX_LOCAL_DISK_SIZE (an alias of ATOM_TIER_NVME_GB) counts GB as 2**30
# bytes; the same number must mean the same size here.
BYTES_PER_GB = 1024**3
NVME_TIER_CLASS = "AtomTierNvmeTier"
NVME_TIER_MODULE = "atom_tier.tiers.vllm_tier"


def nvme_capacity_bytes(nvme_gb: float | None) -> int | None:
    """The cap for a ``nvme_gb`` setting; None means sized automatically at tier start-up."""
    return None if nvme_gb is None else int(nvme_gb * BYTES_PER_GB)


def nvme_secondary_tier_config(
    settings: AtomTierSettings, model_identity: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The ``secondary_tiers`` entry of the NVMe tier, or None when the tier is off.

    ``model_identity`` holds the arguments of :func:`atom_tier.tiers.model_identity.model_identity`
    (model, numerics digest, revision, download dir, operator's weights id); the tier computes
    the weights fingerprint once, in the engine core, where it starts.

    ``capacity_bytes`` None (``ATOM_TIER_NVME_GB`` unset) sizes the tier when it starts:
    the space it already holds plus the free space, minus max(10 % of the filesystem,
    4 GiB) (``atom_tier.tiers.rebuild.auto_capacity_bytes``).
    """
    if not settings.nvme_enabled or settings.nvme_path is None:
        return None
    return {
        "type": NVME_TIER_CLASS,
        "module_path": NVME_TIER_MODULE,
        "root_dir": str(settings.nvme_path),
        "capacity_bytes": nvme_capacity_bytes(settings.nvme_gb),
        "model_identity": dict(model_identity) if model_identity is not None else None,
    }


__all__ = ["BYTES_PER_GB", "nvme_capacity_bytes", "nvme_secondary_tier_config"]
