"""Storage tiers of atom-tier's KV cache: the NVMe chunk store, the shared (Valkey/Redis)
chunk store, and their vLLM adapters.

The connector puts :func:`nvme_secondary_tier_config` and :func:`shared_secondary_tier_config`
into its ``TieringOffloadingSpec``'s ``secondary_tiers``, in that (lookup) order. vLLM's tier
factory imports the class named by ``type`` from ``module_path``, so no registration step is
needed in any process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from atom_tier.sizing import nvme_capacity_bytes

if TYPE_CHECKING:
    from atom_tier.settings import AtomTierSettings

NVME_TIER_CLASS = "AtomTierNvmeTier"
NVME_TIER_MODULE = "atom_tier.tiers.vllm_tier"
SHARED_TIER_CLASS = "AtomTierSharedTier"
SHARED_TIER_MODULE = "atom_tier.tiers.shared_tier"


def nvme_secondary_tier_config(
    settings: AtomTierSettings, model_identity: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The ``secondary_tiers`` entry of the NVMe tier, or None when the tier is off.

    ``model_identity`` holds the arguments of :func:`atom_tier.tiers.model_identity.model_identity`
    (model, numerics digest, revision, download dir, operator's weights id); the tier computes
    the weights fingerprint once, in the engine core, where it starts.

    ``capacity_bytes`` None (``ATOM_TIER_NVME_GB`` unset) sizes the tier when it starts:
    the space it already holds plus the free space, minus max(10 % of the filesystem,
    4 GiB) (``atom_tier.sizing.auto_capacity``).
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


def shared_secondary_tier_config(
    settings: AtomTierSettings, model_identity: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The ``secondary_tiers`` entry of the shared tier, or None when ATOM_TIER_SHARED_URL is
    unset. It holds no address and no secret (vLLM logs its config): the tier reads both from
    the settings where it starts."""
    if not settings.shared_url:
        return None
    return {
        "type": SHARED_TIER_CLASS,
        "module_path": SHARED_TIER_MODULE,
        "model_identity": dict(model_identity) if model_identity is not None else None,
    }


__all__ = ["nvme_secondary_tier_config", "shared_secondary_tier_config"]
