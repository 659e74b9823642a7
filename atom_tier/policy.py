"""atom-tier's configuration policy: what to change in vLLM's config, and why.

Pure functions of three inputs — atom-tier's settings, vLLM's ``VllmConfig`` as the platform
hook sees it, and :class:`PlatformFacts` (what only the platform knows: static graphs, AITER,
fp8) — returning :class:`Decision` objects: one per feature, active or not, with the reason and
the :class:`Change` list that makes it so. Nothing here reads the environment or imports a
platform module; the platform classes (``atom_tier.platform``) gather the facts, call
:func:`plan_defaults` from ``apply_config_platform_defaults``, and :func:`apply_decisions`.

Where the rules live: CUDA graphs in :mod:`atom_tier.policy_graphs`; KV cache dtype, prefix
caching, async scheduling and the tiered connector in :mod:`atom_tier.policy_cache`; AITER
attention, the fused QK-norm/RoPE/KV-cache pass and import-time environment in
:mod:`atom_tier.policy_kernels`.

Import rule: this module, :mod:`atom_tier.policy_cache`, :mod:`atom_tier.policy_kernels` and
:mod:`atom_tier.policy_env` import nothing from vLLM at import time (they do inside functions).
The platform classes import them while vLLM is still resolving its platform, and importing
``vllm.config`` then would start a second, nested resolution (tested in
tests/platform/test_cpu_platform.py). :mod:`atom_tier.policy_graphs` imports vLLM's enums and
is only imported from inside functions.

Why everything happens in ``apply_config_platform_defaults``: ``VllmConfig.__post_init__`` runs
``enforce_eager`` handling, then that hook, then fills still-unset fields from the optimization
level, then sizes CUDA graph captures (static-graph platforms), then ``check_and_update_config``.
Changing graph and pass settings in the first hook lets vLLM derive everything downstream
(capture sizes, splitting ops, compile ranges) exactly as for a user who had asked for them;
``check_and_update_config`` only reports the outcome and runs preflight.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from atom_tier.settings import AtomTierSettings

CONNECTOR_NAME = "AtomTierConnector"
# Inductor graph partition (needed by the fused QK-norm/RoPE/KV-cache pass) needs this torch.
GRAPH_PARTITION_TORCH = "2.9.0.dev"


@dataclass(frozen=True)
class PlatformFacts:
    """What the platform knows that a VllmConfig does not. Tests pass doubles of these."""

    name: str  # "rocm" or "cpu"
    static_graphs: bool  # Platform.support_static_graph_mode(): CUDA/HIP graphs exist
    fp8_kv: bool  # the attention backends can store an fp8 KV cache here
    fp8_kv_head_multiple: int = 1  # CPU attention needs head size % 32 == 0 for fp8 KV
    aiter_available: bool = False  # AMD AITER importable and the GPU arch supported (CDNA3+)
    aiter_enabled: bool = False  # VLLM_ROCM_USE_AITER is on in this process
    aiter_mha_enabled: bool = False  # ... and its MHA sub-switch
    aiter_mla_enabled: bool = False  # ... and its MLA sub-switch
    gcn_arch: str | None = None  # e.g. "gfx942:sramecc+:xnack-"
    fp8_dtype: str | None = None  # e.g. "float8_e4m3fnuz" on gfx942
    graph_partition: bool = False  # torch can do Inductor graph partition (torch >= 2.9)
    breakable_cudagraph: bool = False  # vLLM's breakable CUDA graph is on (mode stays NONE)
    connector_registered: bool = False  # AtomTierConnector is in vLLM's connector factory


@dataclass(frozen=True)
class Change:
    """One assignment to the VllmConfig: ``path`` is dotted from the VllmConfig itself.

    ``append`` adds ``value`` to the list at ``path`` instead of assigning (custom_ops).
    """

    path: str
    value: Any
    append: bool = False

    def describe(self) -> str:
        value = getattr(self.value, "name", None) or repr(self.value)
        return f"{self.path} += [{value}]" if self.append else f"{self.path} = {value}"


@dataclass(frozen=True)
class Decision:
    """One feature: whether atom-tier made (or found) it active, why, and what it changes."""

    feature: str
    active: bool
    reason: str
    changes: tuple[Change, ...] = ()


def get_path(config: Any, path: str) -> Any:
    """The value at a dotted path (``compilation_config.pass_config.x``); None past a None."""
    value = config
    for part in path.split("."):
        if value is None:
            return None
        value = getattr(value, part)
    return value


def apply_changes(config: Any, changes: Iterable[Change]) -> list[Change]:
    """Make the changes on the config in order; returns those that changed something."""
    made = []
    for change in changes:
        owner_path, _, attribute = change.path.rpartition(".")
        owner = get_path(config, owner_path) if owner_path else config
        if owner is None:
            raise ValueError(f"cannot set {change.path}: {owner_path} is None")
        current = getattr(owner, attribute)
        if change.append:
            if change.value in current:
                continue
            current.append(change.value)
        else:
            if current is change.value or (
                type(current) is type(change.value) and current == change.value
            ):
                continue
            setattr(owner, attribute, change.value)
        made.append(change)
    return made


def apply_decisions(config: Any, decisions: Sequence[Decision]) -> list[Change]:
    """Apply the changes of every decision, in order; returns the changes that took effect."""
    made: list[Change] = []
    for decision in decisions:
        made.extend(apply_changes(config, decision.changes))
    return made


def plan_defaults(settings: AtomTierSettings, config: Any, facts: PlatformFacts) -> list[Decision]:
    """Every feature's decision, for ``apply_config_platform_defaults``.

    The config is the one vLLM passes to that hook (see the module docstring for what is
    already resolved then). Nothing is changed here: call :func:`apply_decisions`.
    """
    # Imported here so the core types above stay importable without vLLM (doctor, tests of
    # the report), while the rules need vLLM's config enums.
    from atom_tier.policy_cache import (
        decide_connector,
        decide_kv_cache_dtype,
        decide_prefix_caching,
    )
    from atom_tier.policy_graphs import decide_cuda_graphs
    from atom_tier.policy_kernels import decide_attention, decide_fused_qk_norm_rope

    graphs = decide_cuda_graphs(settings, config, facts)
    connector = decide_connector(settings, config, facts)
    return [
        graphs,
        decide_kv_cache_dtype(settings, config, facts),
        decide_prefix_caching(config),
        connector,
        decide_attention(config, facts, connector_planned=connector.active),
        decide_fused_qk_norm_rope(settings, config, facts, graphs),
    ]
