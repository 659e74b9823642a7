"""``AtomTierRocmPlatform``: vLLM's ROCm platform with atom-tier's policy in its hooks.

Thin by design: each hook calls vLLM's own first, then :mod:`atom_tier.platform.delegate`
(policy, preflight, feature block). Importing this module imports ``vllm.platforms.rocm``, which
queries the GPU at import time; selection (:mod:`.selection`) names the class by path only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from typing_extensions import override
from vllm.platforms.rocm import RocmPlatform

from atom_tier.connector import vllm_compat
from atom_tier.names import CONNECTOR_NAME
from atom_tier.platform.delegate import connector_registered
from atom_tier.platform.hooks import AtomTierHooks
from atom_tier.policy import GRAPH_PARTITION_TORCH, PlatformFacts
from atom_tier.settings import load_settings

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.platforms.interface import DeviceCapability
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import AttentionSelectorConfig


class AtomTierRocmPlatform(AtomTierHooks, RocmPlatform):
    """RocmPlatform + atom-tier: graphs, FP8 KV, AITER, fused pass, tiered connector."""

    @classmethod
    @override
    def atom_tier_facts(cls) -> PlatformFacts:
        """What only this platform knows, for the policy (read at each hook: cheap)."""
        from vllm.compilation.breakable_cudagraph import is_breakable_cudagraph_enabled
        from vllm.utils.torch_utils import is_torch_equal_or_newer

        from atom_tier.preflight.checks_environment import SHUFFLE_KV_VARIABLE, aiter_switch_states

        aiter = vllm_compat.rocm_aiter_ops()
        states = aiter_switch_states() or {}
        shuffle = states.pop(SHUFFLE_KV_VARIABLE, False)

        return PlatformFacts(
            name="rocm",
            static_graphs=cls.support_static_graph_mode(),
            fp8_kv=cls.supports_fp8(),
            aiter_available=vllm_compat.aiter_found_and_supported(),
            aiter_enabled=bool(aiter.is_enabled()),
            aiter_mha_enabled=bool(aiter.is_mha_enabled()),
            aiter_mla_enabled=bool(aiter.is_mla_enabled()),
            gcn_arch=vllm_compat.rocm_gcn_arch(),
            fp8_dtype=str(cls.fp8_dtype()).removeprefix("torch."),
            graph_partition=is_torch_equal_or_newer(GRAPH_PARTITION_TORCH),
            breakable_cudagraph=bool(is_breakable_cudagraph_enabled()),
            connector_registered=connector_registered(CONNECTOR_NAME),
            aiter_switches=tuple(states.items()),
            aiter_shuffle_kv_cache=bool(shuffle),
        )

    @classmethod
    @override
    def apply_config_platform_defaults(cls, vllm_config: VllmConfig) -> None:
        # vLLM's AITER switches are class attributes read when its AITER ops module is
        # imported; re-read them in case that happened before selection set VLLM_ROCM_USE_AITER.
        vllm_compat.rocm_aiter_ops().refresh_env_variables()
        super().apply_config_platform_defaults(vllm_config)

    @classmethod
    @override
    def get_valid_backends(
        cls,
        device_capability: DeviceCapability,
        attn_selector_config: AttentionSelectorConfig,
        num_heads: int | None = None,
    ) -> tuple[list[tuple[AttentionBackendEnum, int]], dict[AttentionBackendEnum, list[str]]]:
        """vLLM's valid backends for the layer, re-ranked so AITER's come first."""
        from atom_tier.policy.kernels import prefer_aiter_backends

        valid, invalid = super().get_valid_backends(
            device_capability, attn_selector_config, num_heads
        )
        if load_settings().disable:
            return valid, invalid
        by_name: dict[str, Any] = {backend.name: backend for backend, _ in valid}
        ranked = prefer_aiter_backends(
            [(backend.name, priority) for backend, priority in valid],
            bool(attn_selector_config.use_mla),
            cls.atom_tier_facts(),
        )
        return [(by_name[name], priority) for name, priority in ranked], invalid
