"""KV cache policy: FP8 KV cache, prefix caching, async scheduling, the tiered connector.

Choices made here (and why):

- FP8 KV: ``--kv-cache-dtype auto`` given explicitly cannot be told from the default, so the
  opt-out is ``ATOM_TIER_KV_CACHE_DTYPE=auto``. Any other explicit dtype is kept. Models whose
  architecture has its own vLLM config hook (``MODELS_CONFIG_MAP``: DeepSeek V3.2/V4, hybrid
  Mamba models, ...) and hybrid models are left alone: those hooks choose the KV dtype or size
  KV pages *before* platform defaults run, so changing the dtype afterwards could contradict
  them. On CPU fp8 is used only where vLLM's CPU attention supports it (AVX-512 or AMX, head
  size a multiple of 32), so the development platform exercises the same fp8 pages.
- Prefix caching and async scheduling: vLLM 0.32 already turns both on by default where the
  model and configuration support them, before any platform hook runs. An explicit
  ``--no-enable-prefix-caching`` / ``--no-async-scheduling`` is kept; atom-tier reports the
  state and the reason, and says when the tiered cache is useless without prefix caching.
- Connector: any ``--kv-transfer-config`` with a connector, and vLLM's own
  ``--kv-offloading-size`` (which builds its connector later in ``__post_init__``), count as
  the user's choice. The connector is only set when ``AtomTierConnector`` is registered in
  vLLM's factory (by atom-tier's general plugin): otherwise vLLM would fail to build it (on
  graph platforms already inside ``VllmConfig``), so atom-tier steps aside and says why.
- Engine ``lmcache``: vLLM's own ``LMCacheConnectorV1`` (registered by vLLM itself), with
  LMCache's configuration translated from atom-tier's settings by the ``lmcache_transfer``
  builder the platform passes in (:func:`atom_tier.lmcache.kv_transfer.lmcache_kv_transfer_config`:
  it probes host memory and disks, which policy does not); settings that leave LMCache no tier
  stop start-up with the setting named.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from atom_tier.names import CONNECTOR_NAME, KV_ROLE, LMCACHE_CONNECTOR
from atom_tier.policy.decisions import Change, Decision, PlatformFacts
from atom_tier.settings import AtomTierSettings, ConnectorEngine, KvCacheDtype


def _has_model_config_hook(model: Any) -> bool:
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    return any(arch in MODELS_CONFIG_MAP for arch in (model.architectures or []))


def decide_kv_cache_dtype(
    settings: AtomTierSettings, config: Any, facts: PlatformFacts
) -> Decision:
    """FP8 KV cache when the user left vLLM's at ``auto`` and the platform supports it."""
    feature = "kv_cache_dtype"
    current = config.cache_config.cache_dtype
    wanted = settings.kv_cache_dtype
    if current != "auto":
        active = str(current).startswith("fp8")
        return Decision(feature, active, f"{current} set by --kv-cache-dtype, kept")
    if wanted == KvCacheDtype.AUTO:
        return Decision(feature, False, "ATOM_TIER_KV_CACHE_DTYPE=auto keeps the model dtype")
    if not facts.fp8_kv:
        return Decision(feature, False, f"the {facts.name} platform has no fp8 KV cache here")
    model = config.model_config
    if model is None:
        return Decision(feature, False, "no model configured")
    if model.is_attention_free:
        return Decision(feature, False, "the model has no attention KV cache")
    if model.is_hybrid or _has_model_config_hook(model):
        return Decision(
            feature,
            False,
            "vLLM's config hook for this architecture decides its KV cache before platform "
            "defaults; pass --kv-cache-dtype fp8 to choose fp8 yourself",
        )
    head = model.get_head_size()
    if head % facts.fp8_kv_head_multiple:
        return Decision(
            feature,
            False,
            f"fp8 KV needs a head size divisible by {facts.fp8_kv_head_multiple} on "
            f"{facts.name} (this model: {head})",
        )
    storage = f" ({facts.fp8_dtype})" if facts.fp8_dtype else ""
    return Decision(
        feature,
        True,
        f"{wanted.value}{storage} instead of auto: half the KV bytes "
        "(ATOM_TIER_KV_CACHE_DTYPE=auto opts out)",
        (Change("cache_config.cache_dtype", wanted.value),),
    )


def decide_prefix_caching(config: Any) -> Decision:
    """Prefix caching on; an explicit off (or a model without support) is reported."""
    feature = "prefix_caching"
    enabled = config.cache_config.enable_prefix_caching
    if enabled is None:  # only for configs built without EngineArgs' resolution
        return Decision(
            feature, True, "unset, turned on", (Change("cache_config.enable_prefix_caching", True),)
        )
    if enabled:
        return Decision(feature, True, "on")
    model = config.model_config
    if model is not None and not model.is_prefix_caching_supported:
        return Decision(feature, False, "this model does not support prefix caching")
    return Decision(
        feature,
        False,
        "--no-enable-prefix-caching kept: no prefix is reused, so the tiered KV cache has "
        "nothing to serve",
    )


def describe_prefix_caching(config: Any, decision: Decision) -> tuple[bool, str]:
    """Final state: the CPU platform turns prefix caching off for MLA models after the hook."""
    enabled = bool(config.cache_config.enable_prefix_caching)
    if enabled == decision.active:
        return enabled, decision.reason
    return enabled, "turned off by the platform for this model (see vLLM's log above)"


def describe_async_scheduling(config: Any, facts: PlatformFacts) -> tuple[bool, str]:
    """Async scheduling is resolved by vLLM (on where supported); atom-tier reports it."""
    if config.scheduler_config.async_scheduling:
        return True, "on"
    if facts.name == "cpu":
        return False, "vLLM's CPU platform does not use async scheduling"
    return False, (
        "--no-async-scheduling, or a feature vLLM cannot combine with it (see its warning above)"
    )


def decide_connector(
    settings: AtomTierSettings,
    config: Any,
    facts: PlatformFacts,
    lmcache_transfer: Callable[[], Mapping[str, Any]],
) -> Decision:
    """The tiered connector when no connector was configured and the engine is not off.

    ``lmcache_transfer`` builds LMCache's ``kv_transfer_config``; called only when the
    ``lmcache`` engine is chosen and nothing else was configured.
    """
    feature = "kv_connector"
    engine = settings.connector
    kv = config.kv_transfer_config
    if kv is not None and kv.kv_connector:
        if kv.kv_connector in (CONNECTOR_NAME, LMCACHE_CONNECTOR):
            return Decision(feature, True, f"{kv.kv_connector} set by --kv-transfer-config")
        return Decision(feature, False, f"--kv-transfer-config chose {kv.kv_connector}, kept")
    if config.cache_config.kv_offloading_size is not None:
        backend = config.cache_config.kv_offloading_backend
        return Decision(
            feature, False, f"vLLM's --kv-offloading-size ({backend} backend) chosen, kept"
        )
    if engine == ConnectorEngine.OFF:
        return Decision(feature, False, "ATOM_TIER_CONNECTOR=off")
    from vllm.config import KVTransferConfig

    if engine == ConnectorEngine.LMCACHE:
        lmcache = KVTransferConfig(**lmcache_transfer())
        return Decision(
            feature,
            True,
            f"{LMCACHE_CONNECTOR} (lmcache engine), configured from atom-tier's settings",
            (Change("kv_transfer_config", lmcache),),
        )
    if not facts.connector_registered:
        return Decision(
            feature,
            False,
            f"{CONNECTOR_NAME} is not registered in this process (is atom-tier's general "
            "plugin excluded by VLLM_PLUGINS?)",
        )
    value = KVTransferConfig(kv_connector=CONNECTOR_NAME, kv_role=KV_ROLE)
    return Decision(
        feature,
        True,
        f"{CONNECTOR_NAME} ({engine.value} engine): no --kv-transfer-config given "
        "(ATOM_TIER_CONNECTOR=off opts out)",
        (Change("kv_transfer_config", value),),
    )


def describe_connector(config: Any, decision: Decision) -> tuple[bool, str]:
    """Final state of the connector, from the config vLLM ended with."""
    kv = config.kv_transfer_config
    name = kv.kv_connector if kv is not None else None
    if decision.active and name not in (CONNECTOR_NAME, LMCACHE_CONNECTOR):
        return False, f"vLLM replaced it with {name}"
    return decision.active, decision.reason
