"""``AtomTierCpuPlatform``: vLLM's CPU platform with atom-tier's policy, for development and CI.

Opt-in (``ATOM_TIER_CPU_PLATFORM=1``). The same policy as on ROCm where it makes sense on CPU:
no static graphs and no AITER here (those rules report "not on this platform"), fp8 KV where
vLLM's CPU attention supports it (x86 with AVX-512 or AMX), prefix caching, the tiered
connector when no ``--kv-transfer-config`` was given, preflight and the feature block.
"""

from __future__ import annotations

from typing_extensions import override
from vllm.platforms.cpu import CpuPlatform
from vllm.platforms.interface import CpuArchEnum

from atom_tier.connector import vllm_compat
from atom_tier.names import CONNECTOR_NAME
from atom_tier.platform.delegate import connector_registered
from atom_tier.platform.hooks import AtomTierHooks
from atom_tier.policy import GRAPH_PARTITION_TORCH, PlatformFacts

# vLLM's CPU attention stores fp8 KV only with head sizes that are multiples of 32.
CPU_FP8_HEAD_MULTIPLE = 32


class AtomTierCpuPlatform(AtomTierHooks, CpuPlatform):
    """CpuPlatform + atom-tier's policy."""

    @classmethod
    @override
    def atom_tier_facts(cls) -> PlatformFacts:
        from vllm.compilation.breakable_cudagraph import is_breakable_cudagraph_enabled
        from vllm.utils.torch_utils import is_torch_equal_or_newer

        x86 = cls.get_cpu_architecture() == CpuArchEnum.X86
        fp8 = x86 and vllm_compat.cpu_has_fp8_kv_isa()
        return PlatformFacts(
            name="cpu",
            static_graphs=cls.support_static_graph_mode(),
            fp8_kv=bool(fp8),
            fp8_kv_head_multiple=CPU_FP8_HEAD_MULTIPLE,
            graph_partition=is_torch_equal_or_newer(GRAPH_PARTITION_TORCH),
            breakable_cudagraph=bool(is_breakable_cudagraph_enabled()),
            connector_registered=connector_registered(CONNECTOR_NAME),
        )
