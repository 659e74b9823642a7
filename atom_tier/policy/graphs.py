"""CUDA/HIP graph policy: resolve to FULL_AND_PIECEWISE; eager only with the escape hatch.

Published MI300X runs lost 3-5x throughput to an eager default (``--enforce-eager`` copied
from a recipe, or an optimization level that leaves graphs off or PIECEWISE). At
``apply_config_platform_defaults`` time (see :mod:`atom_tier.policy`):

- ``--enforce-eager`` has already set ``compilation_config.mode = NONE`` and
  ``cudagraph_mode = NONE`` (and turned JIT warm-up off); ``model_config.enforce_eager`` is
  still read later, where it would zero the capture sizes. Overriding eager therefore clears
  ``enforce_eager`` and restores what it changed, so vLLM sizes captures exactly as for a run
  that never asked for eager.
- ``cudagraph_mode`` is otherwise still ``None`` unless the user set it, and the optimization
  level fills it afterwards (O0: NONE, O1: PIECEWISE, O2/O3: FULL_AND_PIECEWISE). Setting it
  here wins over every level; ``mode`` is set to VLLM_COMPILE when unset because piecewise
  graphs need piecewise compilation (O0 would leave it NONE).

Choices made here (and why):

- An explicit ``cudagraph_mode`` other than NONE (``-cc.cudagraph_mode=PIECEWISE``, FULL, ...)
  is kept: it is a deliberate graph choice, not eager, typically made because full graphs
  broke on some backend. The feature block says it was kept.
- An explicit ``cudagraph_mode=NONE`` counts as eager: overridden unless
  ``ATOM_TIER_ALLOW_EAGER=1``.
- An explicit ``-cc.mode=none`` (without ``--enforce-eager``) or ``TORCH_COMPILE_DISABLE=1`` is
  kept; vLLM then downgrades FULL_AND_PIECEWISE to FULL_DECODE_ONLY and the feature block says
  why. With ``--enforce-eager`` the two cannot be told apart (eager wrote NONE), so compilation
  is turned back on.
- Downgrades vLLM makes later for correctness (pooling and encoder-decoder models, prefill
  context parallelism, connectors that need PIECEWISE) are not fought; they are reported.
- Eager that vLLM itself forces for a reason is kept: on ROCm ``ModelConfig._verify_cuda_graph``
  (vllm/config/model.py) sets ``enforce_eager`` for every encoder-decoder model because HIP graph
  capture is unsupported for them there. Only eager from the user or a default is replaced.
"""

from __future__ import annotations

from typing import Any

from vllm.config.compilation import CompilationMode, CUDAGraphMode

from atom_tier.policy.decisions import Change, Decision, PlatformFacts
from atom_tier.settings import AtomTierSettings

FEATURE = "cuda_graphs"
TARGET = CUDAGraphMode.FULL_AND_PIECEWISE
ESCAPE_HATCH = "ATOM_TIER_ALLOW_EAGER=1"


def _level_default(config: Any) -> CUDAGraphMode | None:
    """The cudagraph_mode vLLM's optimization level would fill in (None when unknown)."""
    from vllm.config.vllm import OPTIMIZATION_LEVEL_TO_CONFIG

    level = getattr(config, "optimization_level", None)
    defaults: Any = OPTIMIZATION_LEVEL_TO_CONFIG.get(level, {}) if level is not None else {}
    mode = defaults.get("compilation_config", {}).get("cudagraph_mode")
    return mode if isinstance(mode, CUDAGraphMode) else None


def _eager(config: Any) -> bool:
    model = config.model_config
    return bool(model is not None and model.enforce_eager)


def vllm_forced_eager(config: Any, facts: PlatformFacts) -> str | None:
    """Why vLLM itself forced eager for this config, or None when it did not.

    vLLM 0.32 forces it in one place before the platform hooks run:
    ``ModelConfig._verify_cuda_graph`` (vllm/config/model.py), for encoder-decoder models on ROCm.
    """
    model = config.model_config
    if facts.name == "rocm" and model is not None and model.is_encoder_decoder:
        return (
            "vLLM forces eager for encoder-decoder models on ROCm, where their graphs are "
            "unsupported (vllm/config/model.py ModelConfig._verify_cuda_graph); kept"
        )
    return None


def decide_cuda_graphs(settings: AtomTierSettings, config: Any, facts: PlatformFacts) -> Decision:
    """FULL_AND_PIECEWISE unless the platform has no graphs, vLLM forced eager for a reason,
    or the escape hatch is set."""
    if not facts.static_graphs:
        return Decision(FEATURE, False, f"the {facts.name} platform has no static graphs")
    cc = config.compilation_config
    eager = _eager(config)
    forced = vllm_forced_eager(config, facts)
    if forced is not None and (eager or cc.cudagraph_mode == CUDAGraphMode.NONE):
        return Decision(FEATURE, False, forced)
    mode: CUDAGraphMode | None = cc.cudagraph_mode
    if settings.allow_eager and (eager or mode == CUDAGraphMode.NONE):
        asked = "--enforce-eager" if eager else "cudagraph_mode=NONE"
        return Decision(FEATURE, False, f"{asked} kept because {ESCAPE_HATCH}")

    if not eager and mode is not None and mode != CUDAGraphMode.NONE:
        kept: tuple[Change, ...] = ()
        if mode.requires_piecewise_compilation() and cc.mode is None:
            kept = (Change("compilation_config.mode", CompilationMode.VLLM_COMPILE),)
        return Decision(
            FEATURE, True, f"cudagraph_mode={mode.name} set in --compilation-config, kept", kept
        )

    changes: list[Change] = []
    if eager:
        reason = (
            f"--enforce-eager overridden (eager costs 3-5x throughput; {ESCAPE_HATCH} keeps it)"
        )
        changes.append(Change("model_config.enforce_eager", False))
        # Eager also turned JIT warm-up off (except under fault tolerance); restore vLLM's default.
        if config.kernel_config.enable_jit_warmup is False and not getattr(
            config.parallel_config, "enable_fault_tolerance", False
        ):
            changes.append(Change("kernel_config.enable_jit_warmup", True))
    elif mode == CUDAGraphMode.NONE:
        reason = f"cudagraph_mode=NONE overridden ({ESCAPE_HATCH} keeps it)"
    else:
        level_mode = _level_default(config)
        level = getattr(config, "optimization_level", None)
        level_name = getattr(level, "name", str(level))
        if level_mode is not None and level_mode != TARGET:
            reason = f"{level_name} would leave {level_mode.name}; forced {TARGET.name}"
        else:
            reason = f"{TARGET.name} set explicitly (also {level_name}'s default)"
    changes.append(Change("compilation_config.cudagraph_mode", TARGET))
    # Piecewise graphs need VLLM_COMPILE. Leave NONE alone when vLLM's breakable CUDA graph
    # is on (it sets NONE on purpose) or when the user chose NONE without eager (see above).
    if not facts.breakable_cudagraph and (
        cc.mode is None or (eager and cc.mode == CompilationMode.NONE)
    ):
        changes.append(Change("compilation_config.mode", CompilationMode.VLLM_COMPILE))
    return Decision(FEATURE, True, reason, tuple(changes))


def compile_enabled_after(decision: Decision, config: Any) -> bool:
    """Whether vLLM's Inductor compilation (and so its fusion passes) will run.

    ``mode`` left at None is filled from the optimization level: VLLM_COMPILE above O0.
    """
    for change in decision.changes:
        if change.path == "compilation_config.mode":
            return bool(change.value == CompilationMode.VLLM_COMPILE)
    mode = config.compilation_config.mode
    if mode is None:
        return int(getattr(config, "optimization_level", 2)) > 0
    return bool(mode == CompilationMode.VLLM_COMPILE)


def final_graph_mode(config: Any, facts: PlatformFacts) -> CUDAGraphMode:
    """The cudagraph_mode vLLM ends with, as seen from ``check_and_update_config``.

    After that hook vLLM still drops the piecewise half when compilation is not VLLM_COMPILE
    (and the breakable CUDA graph is off); that step is predicted here so the feature block
    tells the truth.
    """
    cc = config.compilation_config
    mode: CUDAGraphMode = cc.cudagraph_mode or CUDAGraphMode.NONE
    if (
        mode.requires_piecewise_compilation()
        and cc.mode != CompilationMode.VLLM_COMPILE
        and not facts.breakable_cudagraph
    ):
        return mode.without_piecewise()
    return mode


def _downgrade_cause(config: Any, facts: PlatformFacts) -> str:
    """Why vLLM ended below FULL_AND_PIECEWISE after atom-tier asked for it (best effort)."""
    model = config.model_config
    cc = config.compilation_config
    if cc.mode != CompilationMode.VLLM_COMPILE and not facts.breakable_cudagraph:
        mode = getattr(cc.mode, "name", cc.mode)
        return f"compilation mode is {mode} (piecewise graphs need VLLM_COMPILE)"
    if model is not None and model.pooler_config is not None:
        return "pooling models do not support full graphs"
    if model is not None and model.is_encoder_decoder:
        return "encoder-decoder models capture decode graphs only"
    if config.parallel_config.prefill_context_parallel_size > 1:
        return "prefill context parallelism does not support full graphs"
    kv = config.kv_transfer_config
    if kv is not None and kv.kv_connector:
        return f"the KV connector {kv.kv_connector} may require PIECEWISE (see vLLM's log)"
    return "vLLM changed it for this model or configuration (see its warning above)"


def describe_graphs(config: Any, facts: PlatformFacts, decision: Decision) -> tuple[bool, str]:
    """(active, detail) for the feature block, from the config as it finally resolved."""
    if not facts.static_graphs:
        return False, decision.reason
    mode = final_graph_mode(config, facts)
    if mode == CUDAGraphMode.NONE:
        if not decision.active:
            return False, decision.reason
        return False, f"off: {_downgrade_cause(config, facts)}"
    cc = config.compilation_config
    sizes = cc.cudagraph_capture_sizes or []
    detail = f"{mode.name}, {len(sizes)} capture sizes up to {cc.max_cudagraph_capture_size}"
    if mode != TARGET and decision.active and decision.changes:
        detail += f"; below {TARGET.name} because {_downgrade_cause(config, facts)}"
    return True, f"{detail}; {decision.reason}"
