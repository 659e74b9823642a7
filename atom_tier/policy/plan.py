"""Every feature's decision for ``apply_config_platform_defaults``, in the order applied.

Imports vLLM's config enums (through :mod:`atom_tier.policy.graphs`): import it from inside
the platform hooks, never while vLLM is still resolving its platform (see
:mod:`atom_tier.policy`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from atom_tier.policy.cache import decide_connector, decide_kv_cache_dtype, decide_prefix_caching
from atom_tier.policy.decisions import Decision, PlatformFacts
from atom_tier.policy.graphs import decide_cuda_graphs
from atom_tier.policy.kernels import decide_attention, decide_fused_qk_norm_rope
from atom_tier.settings import AtomTierSettings


def plan_defaults(
    settings: AtomTierSettings,
    config: Any,
    facts: PlatformFacts,
    lmcache_transfer: Callable[[], Mapping[str, Any]],
) -> list[Decision]:
    """Every feature's decision, for ``apply_config_platform_defaults``.

    The config is the one vLLM passes to that hook (see :mod:`atom_tier.policy` for what is
    already resolved then); ``lmcache_transfer`` builds the LMCache engine's
    ``kv_transfer_config`` if that engine is chosen. Nothing is changed here: call
    :func:`atom_tier.policy.apply_decisions`.
    """
    graphs = decide_cuda_graphs(settings, config, facts)
    connector = decide_connector(settings, config, facts, lmcache_transfer)
    return [
        graphs,
        decide_kv_cache_dtype(settings, config, facts),
        decide_prefix_caching(config),
        connector,
        decide_attention(config, facts, connector_planned=connector.active),
        decide_fused_qk_norm_rope(settings, config, facts, graphs),
    ]
