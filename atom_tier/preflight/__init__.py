"""Preflight: checks that turn silent misconfigurations into findings with fixes.

`run_preflight` runs every registered check. Check modules register themselves with `@check`
when imported; CHECK_MODULES lists them so the registry is complete wherever preflight runs.
"""

from __future__ import annotations

import importlib
from typing import Any

from atom_tier.preflight.context import CheckContext
from atom_tier.preflight.findings import Finding, Level, errors, registered_checks, worst_level
from atom_tier.preflight.probes import gather_facts
from atom_tier.settings import AtomTierSettings, load_foreign_env, load_settings

CHECK_MODULES = (
    "atom_tier.preflight.checks_environment",
    "atom_tier.preflight.checks_storage",
    "atom_tier.preflight.checks_lmcache",
    "atom_tier.preflight.checks_connector",
    "atom_tier.preflight.checks_shared",
)

__all__ = [
    "CheckContext",
    "Finding",
    "Level",
    "PreflightError",
    "build_context",
    "errors",
    "run_preflight",
    "worst_level",
]


class PreflightError(RuntimeError):
    """Raised at vLLM start-up when a check finds an error; the message lists each fix."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        lines = [
            f"- [{f.code}] {f.message}" + (f"\n  fix: {f.fix}" if f.fix else "") for f in findings
        ]
        super().__init__("atom-tier preflight found errors:\n" + "\n".join(lines))


def load_check_modules() -> None:
    for module in CHECK_MODULES:
        importlib.import_module(module)


def build_context(
    settings: AtomTierSettings | None = None, vllm_config: Any | None = None
) -> CheckContext:
    """Probe this machine and return the context checks run on."""
    settings = settings or load_settings()
    return CheckContext(
        settings=settings,
        env=load_foreign_env(),
        # Stale /dev/shm segments are reported by `doctor`; a starting server skips the scan.
        facts=gather_facts(settings, shm=vllm_config is None, in_vllm=vllm_config is not None),
        vllm_config=vllm_config,
    )


def run_preflight(ctx: CheckContext, areas: set[str] | None = None) -> list[Finding]:
    """Run every registered check (or those of `areas`), in registration order."""
    load_check_modules()
    findings: list[Finding] = []
    for registered in registered_checks():
        if areas is None or registered.area in areas:
            findings.extend(registered.run(ctx))
    return findings


def raise_on_errors(findings: list[Finding]) -> None:
    """For vLLM start-up: stop with every error and its fix."""
    found = errors(findings)
    if found:
        raise PreflightError(found)
