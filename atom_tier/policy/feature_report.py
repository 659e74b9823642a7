"""The one start-up log block: every atom-tier feature, active or not, and why.

Built at the end of ``check_and_update_config`` from the config vLLM resolved (not only from
what atom-tier asked for), so a later downgrade by vLLM shows up with its cause. Example::

    atom-tier 0.1.0 features (platform rocm, gfx942):
      [on ] cuda_graphs                 FULL_AND_PIECEWISE, 67 capture sizes up to 512; ...
      [off] fused_qk_norm_rope_kvcache  AITER's fused kernel supports head dims 64/128/256; ...
      [on ] preflight                   0 errors, 1 warning: hash-seed
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from atom_tier import __version__
from atom_tier.policy.decisions import Decision, PlatformFacts
from atom_tier.preflight.findings import Finding, Level
from atom_tier.settings import AtomTierSettings, ForeignEnv

HEADER = "atom-tier {version} features (platform {platform}):"
FEATURES = (
    "aiter",
    "aiter_kernels",
    "cuda_graphs",
    "kv_cache_dtype",
    "prefix_caching",
    "async_scheduling",
    "aiter_attention",
    "fused_qk_norm_rope_kvcache",
    "quick_reduce",
    "kv_connector",
    "hash_seed",
    "preflight",
)


@dataclass(frozen=True)
class FeatureStatus:
    name: str
    active: bool
    detail: str


def _by_feature(decisions: Sequence[Decision]) -> dict[str, Decision]:
    return {d.feature: d for d in decisions}


def _missing(feature: str) -> Decision:
    # A config whose apply hook did not run through atom-tier (never in a normal start-up).
    return Decision(feature, False, "not evaluated: atom-tier's defaults hook did not run")


def build_feature_report(
    settings: AtomTierSettings,
    config: Any,
    facts: PlatformFacts,
    decisions: Sequence[Decision],
    findings: Sequence[Finding],
    env: ForeignEnv,
    *,
    kv_scales: bool | None = None,
) -> list[FeatureStatus]:
    """One status per feature in FEATURES, from the final config and the decisions made.

    ``kv_scales``: whether the checkpoint gives vLLM KV-cache scales (None: unknown), from
    :func:`atom_tier.platform.kv_scales.model_kv_scales`.
    """
    from atom_tier.policy.cache import (
        describe_async_scheduling,
        describe_connector,
        describe_prefix_caching,
    )
    from atom_tier.policy.graphs import describe_graphs
    from atom_tier.policy.kernels import (
        describe_aiter,
        describe_aiter_kernels,
        describe_fused_qk_norm_rope,
        describe_quick_reduce,
    )

    made = _by_feature(decisions)

    def decided(feature: str) -> Decision:
        return made.get(feature) or _missing(feature)

    def as_decided(feature: str) -> tuple[bool, str]:
        decision = decided(feature)
        return decision.active, decision.reason

    describers: dict[str, Callable[[], tuple[bool, str]]] = {
        "aiter": lambda: describe_aiter(facts),
        "aiter_kernels": lambda: describe_aiter_kernels(config, facts),
        "cuda_graphs": lambda: describe_graphs(config, facts, decided("cuda_graphs")),
        "kv_cache_dtype": lambda: _describe_kv_dtype(config, decided("kv_cache_dtype"), kv_scales),
        "prefix_caching": lambda: describe_prefix_caching(config, decided("prefix_caching")),
        "async_scheduling": lambda: describe_async_scheduling(config, facts),
        "aiter_attention": lambda: as_decided("aiter_attention"),
        "fused_qk_norm_rope_kvcache": lambda: describe_fused_qk_norm_rope(
            config, decided("fused_qk_norm_rope_kvcache")
        ),
        "quick_reduce": lambda: describe_quick_reduce(config, facts, env),
        "kv_connector": lambda: describe_connector(config, decided("kv_connector")),
        "hash_seed": lambda: _describe_hash_seed(env),
        "preflight": lambda: _describe_preflight(findings),
    }
    return [FeatureStatus(name, *describers[name]()) for name in FEATURES]


# What vLLM does without scales: vllm/model_executor/layers/quantization/kv_cache.py,
# BaseKVCacheMethod.process_weights_after_loading.
NO_KV_SCALES = (
    "; the checkpoint has no KV scales, so vLLM uses 1.0 for every layer: "
    "calibrate scales into the checkpoint (e.g. llm-compressor's kv_cache_scheme) or opt out "
    "with ATOM_TIER_KV_CACHE_DTYPE=auto"
)
UNKNOWN_KV_SCALES = "; KV scales not checked (checkpoint not local): without them vLLM uses 1.0"


def _describe_kv_dtype(config: Any, decision: Decision, kv_scales: bool | None) -> tuple[bool, str]:
    dtype = str(config.cache_config.cache_dtype)
    active = dtype.startswith("fp8")
    scales = ""
    if active and kv_scales is False:
        scales = NO_KV_SCALES
    elif active and kv_scales is None:
        scales = UNKNOWN_KV_SCALES
    if active == decision.active:
        return active, f"{dtype}: {decision.reason}{scales}"
    return active, f"{dtype}: changed by vLLM after atom-tier's defaults{scales}"


def _describe_hash_seed(env: ForeignEnv) -> tuple[bool, str]:
    """vLLM 0.32 seeds prefix hashes with the variable's string (any value Python accepts)."""
    from atom_tier.preflight.checks_environment import hash_seed_problem

    seed = env.pythonhashseed
    if seed is None:
        return False, "PYTHONHASHSEED unset: vLLM's default seed (random per process for xxhash)"
    problem = hash_seed_problem(seed)
    if problem is not None:
        return False, problem
    return True, f"PYTHONHASHSEED={seed!r}: vLLM's prefix hashes agree across processes"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _describe_preflight(findings: Sequence[Finding]) -> tuple[bool, str]:
    counts = {level: [f.code for f in findings if f.level is level] for level in Level}
    errors, warnings = counts[Level.ERROR], counts[Level.WARNING]
    detail = (
        f"{_count(len(findings), 'finding')}: {_count(len(errors), 'error')}, "
        f"{_count(len(warnings), 'warning')}"
    )
    flagged = errors + warnings
    if flagged:
        detail += " (" + ", ".join(dict.fromkeys(flagged)) + ")"
    return not errors, detail


def render_block(statuses: Sequence[FeatureStatus], facts: PlatformFacts) -> str:
    """The block as text: a header and one line per feature."""
    platform = facts.name
    if facts.gcn_arch:
        platform += ", " + facts.gcn_arch.split(":")[0]
    width = max(len(s.name) for s in statuses) if statuses else 0
    lines = [HEADER.format(version=__version__, platform=platform)]
    for status in statuses:
        mark = "on " if status.active else "off"
        lines.append(f"  [{mark}] {status.name.ljust(width)}  {status.detail}")
    return "\n".join(lines)


_last_logged: list[str] = []


def log_block(
    logger: logging.Logger, statuses: Sequence[FeatureStatus], facts: PlatformFacts
) -> str:
    """Log the block as one record (it stays together in interleaved logs); returns the text.

    vLLM may build more than one VllmConfig per process (a draft model's, for instance): the
    block is logged again only when it differs from the last one.
    """
    text = render_block(statuses, facts)
    if _last_logged != [text]:
        logger.info("%s", text)
        _last_logged[:] = [text]
    return text
