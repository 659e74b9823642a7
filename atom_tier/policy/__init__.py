"""atom-tier's configuration policy: what to change in vLLM's config, and why.

Pure functions of three inputs — atom-tier's settings, vLLM's ``VllmConfig`` as the platform
hook sees it, and :class:`PlatformFacts` (what only the platform knows: static graphs, AITER,
fp8) — returning :class:`Decision` objects: one per feature, active or not, with the reason and
the :class:`Change` list that makes it so. Nothing here reads the environment or imports a
platform module; the platform classes (``atom_tier.platform``) gather the facts, call
:func:`atom_tier.policy.plan.plan_defaults` from ``apply_config_platform_defaults``, and
:func:`apply_decisions`.

Modules: the vocabulary (facts, decisions, changes) in :mod:`.decisions`; the order of the
decisions in :mod:`.plan`; CUDA graphs in :mod:`.graphs`; KV cache dtype, prefix caching, async
scheduling and the tiered connector in :mod:`.cache`; AITER attention, the fused
QK-norm/RoPE/KV-cache pass and the AITER backend ranking in :mod:`.kernels`; the environment
set before workers start in :mod:`.env`; the feature block in :mod:`.feature_report`. Policy imports
settings, names and preflight's findings, never a tier, a connector or LMCache: what needs a
probe (the LMCache engine's configuration) is passed in by the platform.

Import rule: this package, :mod:`.decisions`, :mod:`.cache`, :mod:`.kernels`, :mod:`.env` and
:mod:`.feature_report` import nothing from vLLM at import time (they do inside functions). The
platform classes import them while vLLM is still resolving its platform, and importing
``vllm.config`` then would start a second, nested resolution (tested in
tests/platform/test_cpu_platform.py). :mod:`.graphs` and :mod:`.plan` import vLLM's enums and
are imported only from inside the platform hooks.

Why everything happens in ``apply_config_platform_defaults``: ``VllmConfig.__post_init__`` runs
``enforce_eager`` handling, then that hook, then fills still-unset fields from the optimization
level, then sizes CUDA graph captures (static-graph platforms), then ``check_and_update_config``.
Changing graph and pass settings in the first hook lets vLLM derive everything downstream
(capture sizes, splitting ops, compile ranges) exactly as for a user who had asked for them;
``check_and_update_config`` only reports the outcome and runs preflight.
"""

from __future__ import annotations

from atom_tier.policy.decisions import (
    GRAPH_PARTITION_TORCH,
    Change,
    Decision,
    PlatformFacts,
    apply_decisions,
)

__all__ = ["GRAPH_PARTITION_TORCH", "Change", "Decision", "PlatformFacts", "apply_decisions"]
