"""``AtomTierRocmPlatform``: vLLM's ROCm platform with atom-tier's policy in its hooks.

Thin by design: each hook calls vLLM's own first, then :mod:`atom_tier.platform.delegate`
(policy, preflight, feature block). Importing this module imports ``vllm.platforms.rocm``, which
queries the GPU at import time; selection (:mod:`.selection`) names the class by path only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vllm.platforms.rocm import RocmPlatform

from atom_tier.names import CONNECTOR_NAME
from atom_tier.platform.delegate import apply_defaults, check_and_report, connector_registered
from atom_tier.platform.startup import stops_start_up
from atom_tier.policy import GRAPH_PARTITION_TORCH, PlatformFacts
from atom_tier.settings import load_settings

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.platforms.interface import DeviceCapability
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import AttentionSelectorConfig


class AtomTierRocmPlatform(RocmPlatform):
    """RocmPlatform + atom-tier: graphs, FP8 KV, AITER, fused pass, tiered connector."""

    @classmethod
    def atom_tier_facts(cls) -> PlatformFacts:
        """What only this platform knows, for the policy (read at each hook: cheap)."""
        from vllm._aiter_ops import is_aiter_found_and_supported, rocm_aiter_ops
        from vllm.compilation.breakable_cudagraph import is_breakable_cudagraph_enabled
        from vllm.platforms import rocm as vllm_rocm
        from vllm.utils.torch_utils import is_torch_equal_or_newer

        return PlatformFacts(
            name="rocm",
            static_graphs=cls.support_static_graph_mode(),
            fp8_kv=cls.supports_fp8(),
            aiter_available=bool(is_aiter_found_and_supported()),
            aiter_enabled=bool(rocm_aiter_ops.is_enabled()),
            aiter_mha_enabled=bool(rocm_aiter_ops.is_mha_enabled()),
            aiter_mla_enabled=bool(rocm_aiter_ops.is_mla_enabled()),
            gcn_arch=getattr(vllm_rocm, "_GCN_ARCH", None),
            fp8_dtype=str(cls.fp8_dtype()).removeprefix("torch."),
            graph_partition=is_torch_equal_or_newer(GRAPH_PARTITION_TORCH),
            breakable_cudagraph=bool(is_breakable_cudagraph_enabled()),
            connector_registered=connector_registered(CONNECTOR_NAME),
        )

    @classmethod
    def apply_config_platform_defaults(cls, vllm_config: VllmConfig) -> None:
        from vllm._aiter_ops import rocm_aiter_ops

        # vLLM's AITER switches are class attributes read when vllm._aiter_ops is imported;
        # re-read them in case that happened before selection set VLLM_ROCM_USE_AITER.
        rocm_aiter_ops.refresh_env_variables()
        super().apply_config_platform_defaults(vllm_config)
        with stops_start_up():
            apply_defaults(vllm_config, cls.atom_tier_facts())

    @classmethod
    def check_and_update_config(cls, vllm_config: VllmConfig) -> None:
        super().check_and_update_config(vllm_config)
        with stops_start_up():
            check_and_report(vllm_config, cls.atom_tier_facts())

    @classmethod
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
