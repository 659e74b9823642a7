"""atom-tier settings -> the ``kv_connector_extra_config`` of vLLM's offloading connector.

``--kv-transfer-config '{"kv_connector":"AtomTierConnector","kv_role":"kv_both"}'`` is all an
operator writes; the keys vLLM's tiering spec needs are filled in from atom-tier's settings in
every process that reads them (API server for the metric definitions, engine core, workers).
Keys the operator did put in ``kv_connector_extra_config`` win over settings.

Every process must compute the same DRAM tier size (scheduler and workers map one region of
that size), so the automatic size depends only on things constant while the host runs: total
memory (or the cgroup limit), the size of /dev/shm, and the GPU count.
"""

from __future__ import annotations

import math
from typing import Any

from atom_tier.log import get_logger
from atom_tier.names import SPEC_MODULE, SPEC_NAME
from atom_tier.preflight.checks_connector import chunk_tokens_finding, connector_engine_finding
from atom_tier.preflight.findings import Level
from atom_tier.settings import AtomTierSettings, EvictionPolicy
from atom_tier.sizing import device_share, dram_tier_bytes, human_size
from atom_tier.tiers import nvme_secondary_tier_config, shared_secondary_tier_config
from atom_tier.tiers.eviction import VLLM_POLICY_CLASS, VLLM_POLICY_MODULE
from atom_tier.tiers.host import probe_devices_on_node, probe_dram_budget
from atom_tier.tiers.model_identity import numerics_digest

logger = get_logger(__name__)


class ConnectorConfigError(ValueError):
    """The settings cannot make a working tiered connector; the message names the setting."""


def resolve_chunk_tokens(settings: AtomTierSettings, block_size: int) -> int:
    """Tokens per offloaded chunk: ``chunk_tokens``, a whole number of vLLM blocks.

    Preflight refuses an explicit ATOM_TIER_CHUNK_TOKENS that does not divide into blocks when
    the config is built; this repeats it with the block size the worker ended up with (a GPU
    attention backend may change it). The default is rounded up instead (large-block models).
    """
    finding = chunk_tokens_finding(settings, block_size, "the block size this worker uses")
    if finding.level is Level.ERROR:
        raise ConnectorConfigError(f"{finding.message}; fix: {finding.fix}")
    rounded = math.ceil(settings.chunk_tokens / block_size) * block_size
    if rounded != settings.chunk_tokens:
        logger.info(
            "Chunk size %d tokens rounded up to %d (block size %d)",
            settings.chunk_tokens,
            rounded,
            block_size,
        )
    return rounded


def model_identity_entry(vllm_config: Any, settings: AtomTierSettings) -> dict[str, Any]:
    """What a persistent tier needs to compute the model's identity (weights + numerics).

    Cheap: the weight files are read only where the tier starts (the engine core).
    """
    model = vllm_config.model_config
    cache = vllm_config.cache_config
    numerics = numerics_digest(
        model.hf_config.to_dict(),
        dtype=str(model.dtype),
        quantization=model.quantization,
        kv_cache_dtype=cache.cache_dtype,
        kv_cache_dtype_skip_layers=list(cache.kv_cache_dtype_skip_layers),
    )
    return {
        "model": model.model,
        "numerics": numerics,
        "revision": model.revision,
        "download_dir": vllm_config.load_config.download_dir,
        "weights_id": settings.weights_id,
        "load_format": str(vllm_config.load_config.load_format),
    }


def eviction_entries(policy: EvictionPolicy) -> dict[str, str]:
    """vLLM's keys for the DRAM tier's policy: a built-in name, or for ``sticky`` the class
    vLLM's CachePolicyFactory imports from atom-tier (out of tree)."""
    if policy is EvictionPolicy.STICKY:
        return {
            "eviction_policy": VLLM_POLICY_CLASS,
            "cache_policy_module_path": VLLM_POLICY_MODULE,
        }
    return {"eviction_policy": policy.value}


def secondary_tiers(
    settings: AtomTierSettings, model_identity: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Secondary tier entries for vLLM's TieringOffloadingSpec, in lookup order: the local
    NVMe tier before the shared one (a local hit costs no network)."""
    tiers = [
        nvme_secondary_tier_config(settings, model_identity),
        shared_secondary_tier_config(settings, model_identity),
    ]
    return [tier for tier in tiers if tier]


def atom_tier_extra_config(vllm_config: Any, settings: AtomTierSettings) -> dict[str, Any]:
    """The extra-config keys atom-tier's settings ask for."""
    mismatch = connector_engine_finding(settings)
    if mismatch is not None:
        raise ConnectorConfigError(f"{mismatch.message}; fix: {mismatch.fix}")
    share = device_share(vllm_config, probe_devices_on_node())
    dram = dram_tier_bytes(settings, probe_dram_budget(), share)
    if dram <= 0:
        raise ConnectorConfigError(
            "AtomTierConnector needs a DRAM tier (every reload goes through it) but "
            f"ATOM_TIER_DRAM_GB={settings.dram_gb} / ATOM_TIER_DRAM_ENABLED="
            f"{str(settings.dram_enabled).lower()} leave it no memory: give it a size, or "
            "remove AtomTierConnector from --kv-transfer-config"
        )
    extra: dict[str, Any] = {
        "spec_name": SPEC_NAME,
        "spec_module_path": SPEC_MODULE,
        "cpu_bytes_to_use": dram,
        **eviction_entries(settings.eviction),
        # vLLM's switch is the inverse of ours: prompt KV only unless save_decode is on.
        "offload_prompt_only": not settings.save_decode,
        "secondary_tiers": secondary_tiers(settings, model_identity_entry(vllm_config, settings)),
    }
    block_size = vllm_config.cache_config.block_size
    if block_size:
        extra["block_size"] = resolve_chunk_tokens(settings, int(block_size))
    return extra


def apply_extra_config(vllm_config: Any, settings: AtomTierSettings) -> dict[str, Any]:
    """Fill ``kv_connector_extra_config`` in place (operator keys win); returns it."""
    transfer = vllm_config.kv_transfer_config
    extra: dict[str, Any] = transfer.kv_connector_extra_config
    if extra.get("spec_name") == SPEC_NAME and "cpu_bytes_to_use" in extra:
        return extra  # already filled in this process
    chunk_keys = {"block_size", "blocks_per_chunk"}
    for key, value in atom_tier_extra_config(vllm_config, settings).items():
        if key == "block_size" and chunk_keys & extra.keys():
            continue  # vLLM refuses both; the operator's choice stands
        extra.setdefault(key, value)
    return extra


def describe(extra: dict[str, Any]) -> str:
    """One line for the start-up log."""
    tiers = ", ".join(str(t.get("type")) for t in extra.get("secondary_tiers", [])) or "none"
    chunk = (
        f"{extra['block_size']} tokens"
        if "block_size" in extra
        else f"{extra.get('blocks_per_chunk', 1)} blocks"
    )
    return (
        f"DRAM tier {human_size(int(extra['cpu_bytes_to_use']))}, chunk {chunk}, eviction "
        f"{extra.get('eviction_policy')}, secondary tiers: {tiers}, decode KV saved: "
        f"{'no' if extra.get('offload_prompt_only', True) else 'yes'}"
    )
