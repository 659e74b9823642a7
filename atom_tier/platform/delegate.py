"""What atom-tier's platform hooks do, shared by the ROCm and CPU platform classes.

``apply_config_platform_defaults`` → :func:`apply_defaults`: plan with :mod:`atom_tier.policy`,
apply, log each change. ``check_and_update_config`` → :func:`check_and_report`: run preflight,
log the feature block (:mod:`atom_tier.policy.feature_report`), then stop start-up with every error
and its fix. Both hooks run inside one ``VllmConfig.__post_init__``; the decisions made in the
first are kept for the second, keyed by the config object.

vLLM runs ``__post_init__`` again on the same config in the engine-core process (after its
handshake). The decisions are therefore recorded in ``vllm_config.additional_config`` (the
field vLLM provides for platforms; it travels with the config to every process) under
``"atom_tier"``: a config that carries the record has been through atom-tier's policy already,
so the re-run changes nothing, does not re-run preflight and does not log the block twice.
"""

from __future__ import annotations

from typing import Any

from atom_tier.connector import vllm_compat
from atom_tier.log import get_logger
from atom_tier.policy import Decision, PlatformFacts, apply_decisions
from atom_tier.policy.feature_report import FeatureStatus, build_feature_report, log_block
from atom_tier.settings import AtomTierSettings, load_foreign_env, load_settings

logger = get_logger(__name__)

RECORD_KEY = "atom_tier"

# id(config) -> (config, decisions or None for "already applied elsewhere"). The config is held
# so that its id cannot be reused by another object meanwhile.
_PENDING: dict[int, tuple[Any, list[Decision] | None]] = {}


def connector_registered(name: str) -> bool:
    """Whether vLLM's connector factory knows ``name`` (atom-tier's general plugin adds it)."""
    return name in vllm_compat.registered_connectors()


def recorded_decisions(vllm_config: Any) -> list[Decision] | None:
    """The decisions atom-tier recorded on this config, or None if it never saw it."""
    extra = getattr(vllm_config, "additional_config", None)
    if not isinstance(extra, dict) or RECORD_KEY not in extra:
        return None
    rows = extra[RECORD_KEY].get("decisions", [])
    return [Decision(str(feature), bool(active), str(reason)) for feature, active, reason in rows]


def _record(vllm_config: Any, decisions: list[Decision]) -> None:
    extra = getattr(vllm_config, "additional_config", None)
    if isinstance(extra, dict):  # JSON-friendly: vLLM hashes it as JSON
        extra[RECORD_KEY] = {"decisions": [[d.feature, d.active, d.reason] for d in decisions]}


def apply_defaults(
    vllm_config: Any, facts: PlatformFacts, settings: AtomTierSettings | None = None
) -> list[Decision] | None:
    """Plan and apply atom-tier's defaults; None when atom-tier is disabled."""
    settings = settings or load_settings()
    if settings.disable:
        return None
    earlier = recorded_decisions(vllm_config)
    if earlier is not None:
        _PENDING[id(vllm_config)] = (vllm_config, None)
        return earlier
    from atom_tier.lmcache.kv_transfer import lmcache_kv_transfer_config
    from atom_tier.policy.plan import plan_defaults  # imports vLLM's config: not at import time

    def lmcache_transfer() -> dict[str, Any]:
        return lmcache_kv_transfer_config(settings, vllm_config)

    decisions = plan_defaults(settings, vllm_config, facts, lmcache_transfer)
    for change in apply_decisions(vllm_config, decisions):
        logger.info("atom-tier set %s", change.describe())
    _record(vllm_config, decisions)
    _PENDING[id(vllm_config)] = (vllm_config, decisions)
    return decisions


def check_and_report(
    vllm_config: Any, facts: PlatformFacts, settings: AtomTierSettings | None = None
) -> list[FeatureStatus] | None:
    """Preflight, the feature block, then PreflightError if any check found an error.

    None when atom-tier is disabled, or when this config was already reported (re-run).
    """
    from atom_tier.preflight import build_context, raise_on_errors, run_preflight

    settings = settings or load_settings()
    if settings.disable:
        return None
    held, decisions = _PENDING.pop(id(vllm_config), (None, []))
    if held is vllm_config and decisions is None:
        logger.debug("atom-tier: config already configured and reported; nothing to do")
        return None
    if held is not vllm_config:
        decisions = recorded_decisions(vllm_config) or []
    from atom_tier.platform.kv_scales import model_kv_scales

    findings = run_preflight(build_context(settings, vllm_config=vllm_config))
    statuses = build_feature_report(
        settings,
        vllm_config,
        facts,
        decisions or [],
        findings,
        load_foreign_env(),
        kv_scales=model_kv_scales(vllm_config),
    )
    log_block(logger, statuses, facts)
    raise_on_errors(findings)
    return statuses
