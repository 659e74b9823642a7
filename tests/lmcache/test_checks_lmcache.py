"""Each LMCache guard, passing and failing.

A ROCm torch cannot exist on this machine: contexts say "rocm" through ``TorchBuild`` facts (a
stand-in, named in each test). Everything else is real: the LMCache wheel or a compiled HIP
stand-in for the native ops, real VllmConfig objects for prefix caching and connector choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from lmcache_helpers import make_lmcache_package, settings_of, write_dist_info

from atom_tier.lmcache.kv_transfer import lmcache_kv_transfer_config
from atom_tier.lmcache.native_ops import LMCacheFacts, probe_lmcache_facts
from atom_tier.preflight import load_check_modules
from atom_tier.preflight.context import CheckContext, Facts, TorchBuild
from atom_tier.preflight.findings import Finding, Level, registered_checks
from atom_tier.settings import AtomTierSettings, load_foreign_env

TORCH = {
    "rocm": TorchBuild("2.9.0+rocm7.0", hip="7.0.0"),  # stand-in: no ROCm torch here
    "cuda": TorchBuild("2.9.0+cu129", cuda="12.9"),  # stand-in: no CUDA torch here
    "cpu": TorchBuild("2.13.0+cpu"),
}
load_check_modules()  # registers every check, the lmcache ones among them
LMCACHE_CHECKS = [c for c in registered_checks() if c.area == "lmcache"]
BuildConfig = Callable[..., Any]


def make_ctx(
    settings: AtomTierSettings,
    lmfacts: LMCacheFacts,
    *,
    torch: str = "rocm",
    vllm_config: Any = None,
    seed: str | None = None,
    aiofile: bool = True,
) -> CheckContext:
    facts = Facts(
        torch=TORCH[torch],
        vllm_distribution="vllm",
        vllm_version="0.32.0",
        aiter_distributions=(),
        platform_plugins=(),
        aiofile_importable=aiofile,
        host_memory_total=256 * 1024**3,
        host_memory_available=200 * 1024**3,
    )
    env = load_foreign_env({} if seed is None else {"PYTHONHASHSEED": seed})
    return CheckContext(settings, env, facts, vllm_config, lmcache=lmfacts)


def run(name: str, ctx: CheckContext) -> list[Finding]:
    check = next(c for c in LMCACHE_CHECKS if c.name == name)
    return list(check.run(ctx))


def only(name: str, ctx: CheckContext) -> Finding:
    findings = run(name, ctx)
    assert len(findings) == 1, findings
    return findings[0]


@pytest.fixture(scope="module")
def cuda_wheel(lmcache_wheel_dir: Path) -> LMCacheFacts:
    return probe_lmcache_facts([str(lmcache_wheel_dir)])


@pytest.fixture
def hip_facts(hip_build: Path) -> LMCacheFacts:
    return probe_lmcache_facts([str(hip_build)])


@pytest.fixture(scope="module")
def build_config(tiny_model_dir: Path) -> BuildConfig:
    from vllm.engine.arg_utils import EngineArgs

    def build(**engine_args: Any) -> Any:
        engine_args.setdefault("max_model_len", 512)
        return EngineArgs(model=str(tiny_model_dir), **engine_args).create_engine_config()

    return build


LMCACHE = {"ATOM_TIER_CONNECTOR": "lmcache", "ATOM_TIER_DRAM_GB": "4"}


# --- native ops ---------------------------------------------------------------------------


def test_real_cuda_wheel_on_rocm_facts_is_an_error_naming_the_hip_build(
    cuda_wheel: LMCacheFacts,
) -> None:
    finding = only("lmcache-native-ops", make_ctx(settings_of(**LMCACHE), cuda_wheel))
    assert finding.level is Level.ERROR
    assert "CUDA-built" in finding.message and "torch fallback" in finding.message
    assert "BUILD_WITH_HIP=1" in finding.fix and "--no-build-isolation" in finding.fix
    assert "git checkout v0.5.6" in finding.fix
    assert "ATOM_TIER_ALLOW_LMCACHE_FALLBACK=1" in finding.fix


def test_escape_hatch_turns_it_into_a_warning(cuda_wheel: LMCacheFacts) -> None:
    settings = settings_of(**LMCACHE, ATOM_TIER_ALLOW_LMCACHE_FALLBACK="1")
    finding = only("lmcache-native-ops", make_ctx(settings, cuda_wheel))
    assert finding.level is Level.WARNING and "allowed by" in finding.message


def test_hip_stand_in_on_rocm_facts_passes(hip_facts: LMCacheFacts) -> None:
    finding = only("lmcache-native-ops", make_ctx(settings_of(**LMCACHE), hip_facts))
    assert finding.level is Level.OK and "HIP-built" in finding.message


def test_missing_ops_on_rocm_facts_is_an_error(tmp_path: Path) -> None:
    make_lmcache_package(tmp_path)
    lmfacts = probe_lmcache_facts([str(tmp_path)])
    finding = only("lmcache-native-ops", make_ctx(settings_of(**LMCACHE), lmfacts))
    assert finding.level is Level.ERROR and "no native ops" in finding.message
    assert "BUILD_WITH_HIP=1" in finding.fix


def test_lmcache_not_installed_is_an_error(tmp_path: Path) -> None:
    lmfacts = probe_lmcache_facts([str(tmp_path)])
    finding = only("lmcache-native-ops", make_ctx(settings_of(**LMCACHE), lmfacts))
    assert finding.level is Level.ERROR and "not installed" in finding.message
    assert "BUILD_WITH_HIP=1" in finding.fix


def test_real_cuda_wheel_on_cuda_facts_passes(cuda_wheel: LMCacheFacts) -> None:
    ctx = make_ctx(settings_of(**LMCACHE), cuda_wheel, torch="cuda")
    assert only("lmcache-native-ops", ctx).level is Level.OK


def test_hip_build_on_cuda_facts_is_an_error(hip_facts: LMCacheFacts) -> None:
    finding = only("lmcache-native-ops", make_ctx(settings_of(**LMCACHE), hip_facts, torch="cuda"))
    assert finding.level is Level.ERROR and "--force-reinstall" in finding.fix


def test_cpu_torch_warns_that_lmcache_cannot_serve_here(cuda_wheel: LMCacheFacts) -> None:
    finding = only("lmcache-native-ops", make_ctx(settings_of(**LMCACHE), cuda_wheel, torch="cpu"))
    assert finding.level is Level.WARNING and "cannot serve here" in finding.message


def test_checks_stay_silent_when_lmcache_is_not_the_connector(cuda_wheel: LMCacheFacts) -> None:
    ctx = make_ctx(settings_of(ATOM_TIER_SAVE_DECODE="true"), cuda_wheel, aiofile=False)
    for check in LMCACHE_CHECKS:
        if check.name != "lmcache-cuda-packages":
            assert list(check.run(ctx)) == [], check.name


def test_operators_own_lmcache_connector_is_guarded_too(
    cuda_wheel: LMCacheFacts, build_config: BuildConfig
) -> None:
    config = build_config(
        kv_transfer_config={"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
    )
    ctx = make_ctx(settings_of(), cuda_wheel, vllm_config=config)  # connector setting: native
    assert only("lmcache-native-ops", ctx).level is Level.ERROR
    assert run("lmcache-config", ctx) == []  # atom-tier does not configure the operator's


def test_another_connector_chosen_by_the_operator_is_not_guarded(
    cuda_wheel: LMCacheFacts, build_config: BuildConfig
) -> None:
    config = build_config(
        kv_transfer_config={"kv_connector": "NixlConnector", "kv_role": "kv_both"}
    )
    ctx = make_ctx(settings_of(**LMCACHE), cuda_wheel, vllm_config=config)
    assert run("lmcache-native-ops", ctx) == []


# --- hash seed ------------------------------------------------------------------------------


def test_atom_tiers_hash_is_fixed_even_without_a_seed(hip_facts: LMCacheFacts) -> None:
    finding = only("lmcache-hash-seed", make_ctx(settings_of(**LMCACHE), hip_facts, seed=None))
    assert finding.level is Level.OK and "sha256" in finding.message


def test_builtin_hash_without_a_seed_is_an_error(
    hip_facts: LMCacheFacts, build_config: BuildConfig
) -> None:
    config = build_config(
        kv_transfer_config={"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
    )
    for seed in (None, "random"):
        ctx = make_ctx(settings_of(**LMCACHE), hip_facts, vllm_config=config, seed=seed)
        finding = only("lmcache-hash-seed", ctx)
        assert finding.level is Level.ERROR, seed
        assert "export PYTHONHASHSEED=0" in finding.fix


def test_builtin_hash_with_a_seed_set_too_late_is_an_error(
    hip_facts: LMCacheFacts, build_config: BuildConfig
) -> None:
    transfer = lmcache_kv_transfer_config(settings_of(**LMCACHE))
    transfer["kv_connector_extra_config"]["lmcache.pre_caching_hash_algorithm"] = "builtin"
    config = build_config(kv_transfer_config=transfer)
    late = replace(hip_facts, hash_randomization=True)
    ctx = make_ctx(settings_of(**LMCACHE), late, vllm_config=config, seed="0")
    finding = only("lmcache-hash-seed", ctx)
    assert finding.level is Level.ERROR and "after this process started" in finding.message
    at_start = make_ctx(
        settings_of(**LMCACHE),
        replace(hip_facts, hash_randomization=False),
        vllm_config=config,
        seed="0",
    )
    assert only("lmcache-hash-seed", at_start).level is Level.OK
    fixed = make_ctx(settings_of(**LMCACHE), late, vllm_config=config, seed="42")
    assert only("lmcache-hash-seed", fixed).level is Level.OK


# --- aiofile, decode cache, prefix caching --------------------------------------------------


def test_disk_tier_without_aiofile_is_an_error(hip_facts: LMCacheFacts, tmp_path: Path) -> None:
    settings = settings_of(**LMCACHE, ATOM_TIER_NVME_PATH=tmp_path, ATOM_TIER_NVME_GB=1)
    finding = only("lmcache-aiofile", make_ctx(settings, hip_facts, aiofile=False))
    assert finding.level is Level.ERROR and finding.fix == "pip install aiofile"
    assert only("lmcache-aiofile", make_ctx(settings, hip_facts)).level is Level.OK
    assert run("lmcache-aiofile", make_ctx(settings_of(**LMCACHE), hip_facts, aiofile=False)) == []


def test_decode_cache_saving_is_an_error_unless_allowed(hip_facts: LMCacheFacts) -> None:
    on = settings_of(**LMCACHE, ATOM_TIER_SAVE_DECODE="true")
    finding = only("lmcache-save-decode", make_ctx(on, hip_facts))
    assert finding.level is Level.ERROR and "100-250 s" in finding.message
    assert "ATOM_TIER_ALLOW_LMCACHE_SAVE_DECODE=1" in finding.fix
    allowed = settings_of(
        **LMCACHE, LMCACHE_SAVE_DECODE_CACHE="true", ATOM_TIER_ALLOW_LMCACHE_SAVE_DECODE="1"
    )
    assert only("lmcache-save-decode", make_ctx(allowed, hip_facts)).level is Level.WARNING
    assert (
        only("lmcache-save-decode", make_ctx(settings_of(**LMCACHE), hip_facts)).level is Level.OK
    )


def test_decode_cache_saving_in_the_operators_config_is_caught(
    hip_facts: LMCacheFacts, build_config: BuildConfig
) -> None:
    config = build_config(
        kv_transfer_config={
            "kv_connector": "LMCacheConnectorV1",
            "kv_role": "kv_both",
            "kv_connector_extra_config": {"lmcache.save_decode_cache": "True"},
        }
    )
    finding = only("lmcache-save-decode", make_ctx(settings_of(), hip_facts, vllm_config=config))
    assert finding.level is Level.ERROR and "--kv-transfer-config" in finding.message


def test_prefix_caching_off_is_an_error(hip_facts: LMCacheFacts, build_config: BuildConfig) -> None:
    transfer = lmcache_kv_transfer_config(settings_of(**LMCACHE))
    off = build_config(kv_transfer_config=transfer, enable_prefix_caching=False)
    finding = only(
        "lmcache-prefix-caching", make_ctx(settings_of(**LMCACHE), hip_facts, vllm_config=off)
    )
    assert finding.level is Level.ERROR and finding.fix == "remove --no-enable-prefix-caching"
    on = build_config(kv_transfer_config=transfer)
    ok = only("lmcache-prefix-caching", make_ctx(settings_of(**LMCACHE), hip_facts, vllm_config=on))
    assert ok.level is Level.OK
    assert run("lmcache-prefix-caching", make_ctx(settings_of(**LMCACHE), hip_facts)) == []


# --- configuration shown by doctor ----------------------------------------------------------


def test_configuration_is_shown(hip_facts: LMCacheFacts, tmp_path: Path) -> None:
    settings = settings_of(**LMCACHE, ATOM_TIER_NVME_PATH=tmp_path, ATOM_TIER_NVME_GB=10)
    finding = only("lmcache-config", make_ctx(settings, hip_facts))
    assert finding.level is Level.INFO
    for text in ("DRAM tier 4.00 GB", f"disk tier {tmp_path} capped at 10.00 GB", "telemetry off"):
        assert text in finding.message


def test_configuration_error_names_the_settings(hip_facts: LMCacheFacts) -> None:
    settings = settings_of(ATOM_TIER_CONNECTOR="lmcache", ATOM_TIER_DRAM_ENABLED="false")
    finding = only("lmcache-config", make_ctx(settings, hip_facts))
    assert finding.level is Level.ERROR and "ATOM_TIER_DRAM_ENABLED=false" in finding.message
    assert "ATOM_TIER_CONNECTOR=off" in finding.fix


# --- CUDA-only packages (runs whatever the connector) ---------------------------------------


def test_cuda_only_packages_on_rocm_facts_warn_with_the_uninstall_command(
    hip_build: Path,
) -> None:
    for name in ("cupy-cuda13x", "cuda-python", "nixl-cu12", "numpy"):
        write_dist_info(hip_build, name, "1.0")
    lmfacts = probe_lmcache_facts([str(hip_build)])
    finding = only("lmcache-cuda-packages", make_ctx(settings_of(), lmfacts))  # native engine
    assert finding.level is Level.WARNING
    assert finding.fix == "pip uninstall -y cuda-python cupy-cuda13x nixl-cu12"
    assert run("lmcache-cuda-packages", make_ctx(settings_of(), lmfacts, torch="cuda")) == []


def test_no_cuda_only_packages_passes(hip_facts: LMCacheFacts) -> None:
    assert only("lmcache-cuda-packages", make_ctx(settings_of(), hip_facts)).level is Level.OK


def test_facts_are_probed_once_per_context_when_absent() -> None:
    ctx = make_ctx(settings_of(**LMCACHE), probe_lmcache_facts([]))
    ctx.lmcache = None
    run("lmcache-cuda-packages", ctx)
    probed = ctx.lmcache
    assert isinstance(probed, LMCacheFacts)
    run("lmcache-native-ops", ctx)
    assert ctx.lmcache is probed


def test_operators_own_lmcache_configuration_is_reported_as_theirs(
    hip_facts: LMCacheFacts, build_config: BuildConfig
) -> None:
    config = build_config(
        kv_transfer_config={"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
    )
    ctx = make_ctx(settings_of(**LMCACHE), hip_facts, vllm_config=config)
    finding = only("lmcache-config", ctx)
    assert finding.level is Level.INFO and "operator's --kv-transfer-config" in finding.message
    ours = build_config(kv_transfer_config=lmcache_kv_transfer_config(settings_of(**LMCACHE)))
    shown = only("lmcache-config", make_ctx(settings_of(**LMCACHE), hip_facts, vllm_config=ours))
    assert "LMCache configuration: DRAM tier 4.00 GB" in shown.message
