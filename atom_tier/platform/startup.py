"""How atom-tier's start-up errors and warnings reach the operator of a starting vLLM.

A bad setting (:class:`SettingsError`), a preflight error (:class:`PreflightError`) or settings
the ``lmcache`` engine cannot run with (:class:`LMCacheConfigError`) are raised inside code vLLM
calls while it starts: the platform plugin (while vLLM resolves its platform), the general
plugin (while vLLM builds its argument parser) and the platform hooks (inside
``VllmConfig.__post_init__``). Raised as they are, each would reach the operator under a
traceback through vLLM's, asyncio's and pydantic's frames.

:func:`stops_start_up` wraps those calls and turns these errors into ``SystemExit`` carrying
one block: what is wrong (variable, value, what is allowed) and the fix. vLLM's start path
catches ``Exception`` where it catches anything, never ``SystemExit``, so the interpreter ends
the process with status 1 and prints the block alone. The errors stay ordinary exceptions
everywhere else (tests, ``doctor``, library use of the policy).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager

from atom_tier.lmcache.config import LMCacheConfigError
from atom_tier.log import get_logger
from atom_tier.preflight import PreflightError
from atom_tier.preflight.checks_environment import unknown_setting_findings
from atom_tier.settings import SettingsError, settings_fields, unknown_variables

logger = get_logger(__name__)

HEADER = "atom-tier: vLLM not started"


def _default_of(variable: str) -> str:
    for name, fallbacks, default, _ in settings_fields():
        if variable in (name, *fallbacks):
            return default
    return "unset"


def settings_block(error: SettingsError) -> str:
    """One block for a bad setting: each bad variable with its value, what is allowed, fix."""
    what = "an invalid setting" if len(error.problems) == 1 else "invalid settings"
    lines = [f"{HEADER}: {what}"]
    for variable, problem in error.problems:
        default = _default_of(variable)
        unset = "unset it" if default == "unset" else f"unset it for the default {default}"
        lines += [f"- {problem}", f"  fix: set {variable} to an allowed value, or {unset}"]
    return "\n".join(lines)


def preflight_block(error: PreflightError) -> str:
    """One block for preflight errors: each finding's code, message and fix."""
    count = len(error.findings)
    lines = [f"{HEADER}: preflight found {count} error{'' if count == 1 else 's'}"]
    for finding in error.findings:
        lines.append(f"- [{finding.code}] {finding.message}")
        if finding.fix:
            lines.append(f"  fix: {finding.fix}")
    return "\n".join(lines)


@contextmanager
def stops_start_up() -> Iterator[None]:
    """Around an entry point or hook vLLM calls: a configuration error of atom-tier's ends the
    process with its block on stderr and status 1, without a traceback."""
    try:
        yield
    except SettingsError as error:
        raise SystemExit(settings_block(error)) from None
    except PreflightError as error:
        raise SystemExit(preflight_block(error)) from None
    except LMCacheConfigError as error:  # the lmcache engine's settings, while planning
        block = f"{HEADER}: the lmcache engine cannot be configured\n- {error.problem}"
        raise SystemExit(f"{block}\n  fix: {error.fix}") from None


_warned: set[str] = set()


def warn_unknown_settings() -> list[str]:
    """Log a warning for each ``ATOM_TIER_*`` variable that names no setting; returns them.

    Only in the process vLLM was started in: the engine core and the workers inherit the same
    environment and would repeat each warning. Once per variable per process.
    """
    if multiprocessing.parent_process() is not None:
        return []
    warned = []
    for finding in unknown_setting_findings(unknown_variables()):
        if finding.message not in _warned:
            _warned.add(finding.message)
            warned.append(finding.message)
            logger.warning("atom-tier: %s; fix: %s", finding.message, finding.fix)
    return warned
