"""The config hooks both atom-tier platform classes share: vLLM's own first, then atom-tier's.

``apply_config_platform_defaults`` plans and applies the policy; ``check_and_update_config``
runs preflight and logs the feature block (:mod:`.delegate`). A bad setting or a preflight
error raised inside either ends vLLM's start with one block (:mod:`.startup`). Each platform
class supplies only what it knows: :meth:`AtomTierHooks.atom_tier_facts`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from typing_extensions import override
from vllm.platforms.interface import Platform

from atom_tier.platform.delegate import apply_defaults, check_and_report
from atom_tier.platform.startup import stops_start_up

if TYPE_CHECKING:
    from vllm.config import VllmConfig

    from atom_tier.policy import PlatformFacts


class AtomTierHooks(Platform):
    """Mixed in before a vLLM platform class: ``class X(AtomTierHooks, CpuPlatform)``."""

    @classmethod
    def atom_tier_facts(cls) -> PlatformFacts:
        """What only this platform knows, for the policy (read at each hook: cheap)."""
        raise NotImplementedError

    @classmethod
    @override
    def apply_config_platform_defaults(cls, vllm_config: VllmConfig) -> None:
        super().apply_config_platform_defaults(vllm_config)
        with stops_start_up():
            apply_defaults(vllm_config, cls.atom_tier_facts())

    @classmethod
    @override
    def check_and_update_config(cls, vllm_config: VllmConfig) -> None:
        super().check_and_update_config(vllm_config)
        with stops_start_up():
            check_and_report(vllm_config, cls.atom_tier_facts())
