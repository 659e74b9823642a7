"""Settings -> LMCache configuration, field by field (pure translation, no probing)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lmcache_helpers import settings_of

from atom_tier.lmcache.config import (
    GIB,
    LMCACHE_DEFAULT_CPU_GB,
    MIB,
    STAGING_CPU_GB,
    HostShare,
    LMCacheConfigError,
    apply_lmcache_environment,
    lmcache_config,
    lmcache_environment,
    per_worker_gb,
)
from atom_tier.settings import SettingsError, load_settings

LMCACHE_KEYS = {
    "chunk_size",
    "local_cpu",
    "max_local_cpu_size",
    "local_disk",
    "max_local_disk_size",
    "save_decode_cache",
    "pre_caching_hash_algorithm",
}


def test_defaults_translate_to_a_dram_only_lmcache() -> None:
    config = lmcache_config(settings_of(), HostShare(auto_cpu_bytes=20 * GIB))
    assert config.config_keys() == {
        "chunk_size": 256,
        "local_cpu": True,
        "max_local_cpu_size": 20.0,
        "local_disk": None,
        "max_local_disk_size": 0.0,
        "save_decode_cache": False,
        "pre_caching_hash_algorithm": "sha256",
    }
    assert config.environment() == {"LMCACHE_TRACK_USAGE": "false"}


def test_extra_config_prefixes_every_key() -> None:
    config = lmcache_config(settings_of(ATOM_TIER_DRAM_GB=4))
    extra = config.extra_config()
    assert {k.removeprefix("lmcache.") for k in extra} == LMCACHE_KEYS
    assert all(k.startswith("lmcache.") for k in extra)


@pytest.mark.parametrize("variable", ["ATOM_TIER_CHUNK_TOKENS", "LMCACHE_CHUNK_SIZE"])
def test_chunk_tokens_become_chunk_size(variable: str) -> None:
    config = lmcache_config(settings_of(**{variable: 512, "ATOM_TIER_DRAM_GB": 1}))
    assert config.chunk_size == 512


@pytest.mark.parametrize("variable", ["ATOM_TIER_DRAM_GB", "LMCACHE_MAX_LOCAL_CPU_SIZE"])
def test_dram_size_is_the_server_total_split_over_workers(variable: str) -> None:
    settings = settings_of(**{variable: 24})
    assert lmcache_config(settings).max_local_cpu_size == 24.0
    split = lmcache_config(settings, HostShare(workers=8))
    assert split.local_cpu and split.max_local_cpu_size == 3.0 and split.workers == 8
    assert "per worker, 8 workers" in split.describe()
    assert "ATOM_TIER_DRAM_GB=24 for the server" in split.describe()


def test_uneven_split_rounds_down_to_whole_mib() -> None:
    size = lmcache_config(settings_of(ATOM_TIER_DRAM_GB=10), HostShare(workers=3))
    assert size.max_local_cpu_size * GIB % MIB == 0
    assert 3 * size.max_local_cpu_size <= 10 < 3 * (size.max_local_cpu_size + MIB / GIB)
    assert per_worker_gb(GIB, 1) == 1.0


def test_automatic_dram_size_comes_from_host_share() -> None:
    config = lmcache_config(settings_of(), HostShare(workers=2, auto_cpu_bytes=64 * GIB))
    assert config.max_local_cpu_size == 32.0
    assert "sized automatically" in config.describe()


def test_unknown_host_memory_falls_back_to_lmcache_default() -> None:
    config = lmcache_config(settings_of(), HostShare(auto_cpu_bytes=None))
    assert config.local_cpu and config.max_local_cpu_size == LMCACHE_DEFAULT_CPU_GB


@pytest.mark.parametrize(
    "env",
    [
        {"ATOM_TIER_DRAM_GB": "0"},
        {"ATOM_TIER_DRAM_ENABLED": "false"},
        {"LMCACHE_LOCAL_CPU": "False"},
    ],
)
def test_dram_off_with_disk_keeps_a_staging_buffer(env: dict[str, str], tmp_path: Path) -> None:
    """LMCache's disk backend asserts a CPU backend exists: it stays, as a buffer only."""
    settings = settings_of(**env, ATOM_TIER_NVME_PATH=tmp_path, ATOM_TIER_NVME_GB=8)
    config = lmcache_config(settings)
    assert config.local_cpu is False
    assert config.max_local_cpu_size == STAGING_CPU_GB
    assert config.local_disk == str(tmp_path)
    assert "DRAM tier off" in config.describe()


def test_no_tier_at_all_is_an_error_naming_the_settings() -> None:
    with pytest.raises(LMCacheConfigError) as raised:
        lmcache_config(settings_of(ATOM_TIER_DRAM_GB=0))
    assert "ATOM_TIER_DRAM_GB" in raised.value.problem
    assert "ATOM_TIER_CONNECTOR=off" in raised.value.fix
    assert raised.value.fix in str(raised.value)


@pytest.mark.parametrize(
    ("path_variable", "size_variable", "path_value"),
    [
        ("ATOM_TIER_NVME_PATH", "ATOM_TIER_NVME_GB", "{dir}"),
        ("LMCACHE_LOCAL_DISK", "LMCACHE_MAX_LOCAL_DISK_SIZE", "file://{dir}/"),
    ],
)
def test_disk_tier_path_and_cap(
    tmp_path: Path, path_variable: str, size_variable: str, path_value: str
) -> None:
    settings = settings_of(
        ATOM_TIER_DRAM_GB=8, **{path_variable: path_value.format(dir=tmp_path), size_variable: 100}
    )
    config = lmcache_config(settings, HostShare(workers=4))
    assert config.local_disk == str(tmp_path)
    assert config.max_local_disk_size == 25.0
    assert f"disk tier {tmp_path} capped at 25.00 GB" in config.describe()


def test_disk_cap_zero_turns_the_disk_tier_off(tmp_path: Path) -> None:
    settings = settings_of(ATOM_TIER_DRAM_GB=8, ATOM_TIER_NVME_PATH=tmp_path, ATOM_TIER_NVME_GB=0)
    config = lmcache_config(settings)
    assert config.local_disk is None and config.max_local_disk_size == 0.0


def test_automatic_disk_cap_comes_from_host_share(tmp_path: Path) -> None:
    settings = settings_of(ATOM_TIER_DRAM_GB=8, ATOM_TIER_NVME_PATH=tmp_path)
    config = lmcache_config(settings, HostShare(workers=2, auto_disk_bytes=200 * GIB))
    assert config.max_local_disk_size == 100.0
    with pytest.raises(LMCacheConfigError, match="ATOM_TIER_NVME_PATH"):
        lmcache_config(settings, HostShare(auto_disk_bytes=None))


def test_disk_path_with_a_comma_is_refused(tmp_path: Path) -> None:
    settings = settings_of(
        ATOM_TIER_DRAM_GB=8, ATOM_TIER_NVME_PATH=tmp_path / "a,b", ATOM_TIER_NVME_GB=1
    )
    with pytest.raises(LMCacheConfigError, match="comma"):
        lmcache_config(settings)


def test_sizes_too_small_for_the_workers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LMCacheConfigError, match="ATOM_TIER_DRAM_GB"):
        lmcache_config(settings_of(ATOM_TIER_DRAM_GB=0.0001), HostShare(workers=8))
    disk = settings_of(ATOM_TIER_DRAM_GB=8, ATOM_TIER_NVME_PATH=tmp_path, ATOM_TIER_NVME_GB=0.0001)
    with pytest.raises(LMCacheConfigError, match="ATOM_TIER_NVME_GB"):
        lmcache_config(disk, HostShare(workers=8))
    with pytest.raises(LMCacheConfigError, match="worker"):
        lmcache_config(settings_of(ATOM_TIER_DRAM_GB=8), HostShare(workers=0))


@pytest.mark.parametrize(
    ("variable", "value", "saved"),
    [
        ("ATOM_TIER_SAVE_DECODE", "true", True),
        ("LMCACHE_SAVE_DECODE_CACHE", "True", True),
        ("ATOM_TIER_SAVE_DECODE", "false", False),
    ],
)
def test_save_decode_becomes_save_decode_cache(variable: str, value: str, saved: bool) -> None:
    config = lmcache_config(settings_of(ATOM_TIER_DRAM_GB=1, **{variable: value}))
    assert config.save_decode_cache is saved


def test_hash_algorithm_is_passed_through() -> None:
    config = lmcache_config(settings_of(ATOM_TIER_DRAM_GB=1), hash_algorithm="xxhash")
    assert config.pre_caching_hash_algorithm == "xxhash"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "false"),
        ({"ATOM_TIER_LMCACHE_TELEMETRY": "true"}, "true"),
        ({"LMCACHE_TRACK_USAGE": "true"}, "true"),
        ({"LMCACHE_TRACK_USAGE": "False"}, "false"),  # LMCache itself only honours "false"
        ({"LMCACHE_TRACK_USAGE": "false", "ATOM_TIER_LMCACHE_TELEMETRY": "1"}, "true"),
    ],
)
def test_telemetry_is_off_unless_turned_on(env: dict[str, str], expected: str) -> None:
    settings = load_settings(env)
    assert lmcache_environment(settings) == {"LMCACHE_TRACK_USAGE": expected}
    assert lmcache_config(settings, HostShare(auto_cpu_bytes=GIB)).track_usage is (
        expected == "true"
    )


def test_apply_environment_overwrites_with_the_settings_value() -> None:
    environ = {"LMCACHE_TRACK_USAGE": "yes", "OTHER": "x"}
    applied = apply_lmcache_environment(settings_of(), environ)
    assert applied == {"LMCACHE_TRACK_USAGE": "false"}
    assert environ == {"LMCACHE_TRACK_USAGE": "false", "OTHER": "x"}


def test_bad_telemetry_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="LMCACHE_TRACK_USAGE"):
        load_settings({"LMCACHE_TRACK_USAGE": "maybe"})


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ("ATOM_TIER_ALLOW_LMCACHE_FALLBACK", "allow_lmcache_fallback"),
        ("ATOM_TIER_ALLOW_LMCACHE_SAVE_DECODE", "allow_lmcache_save_decode"),
        ("ATOM_TIER_LMCACHE_TELEMETRY", "lmcache_telemetry"),
    ],
)
def test_new_settings_default_off_and_read_their_variable(variable: str, field: str) -> None:
    assert getattr(load_settings({}), field) is False
    assert getattr(load_settings({variable: "1"}), field) is True
