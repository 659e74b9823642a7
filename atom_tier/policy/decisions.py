"""The policy's vocabulary: the facts it decides from, its decisions and their changes.

:class:`PlatformFacts` is what only the platform knows (static graphs, AITER, fp8);
:class:`Decision` is one feature, active or not, with the reason and the :class:`Change` list
that makes it so; :func:`apply_decisions` makes the changes on a ``VllmConfig``. Nothing here
imports vLLM (see :mod:`atom_tier.policy`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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
    # vLLM's AITER sub-switch variables as it resolved them: ((variable, on), ...)
    aiter_switches: tuple[tuple[str, bool], ...] = ()
    aiter_shuffle_kv_cache: bool = False  # VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT=1


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
