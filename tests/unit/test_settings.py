"""Settings: every variable, every recipe fallback, precedence, and each error path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from atom_tier.settings import (
    AtomTierSettings,
    ConnectorEngine,
    EvictionPolicy,
    KvCacheDtype,
    QuickReduce,
    SettingsError,
    load_foreign_env,
    load_settings,
    settings_fields,
    unknown_variables,
    variable_of,
)

# (variable, raw value, field, parsed value): one row per ATOM_TIER_* variable.
ATOM_TIER_CASES = [
    ("ATOM_TIER_DISABLE", "1", "disable", True),
    ("ATOM_TIER_ALLOW_EAGER", "true", "allow_eager", True),
    ("ATOM_TIER_KV_CACHE_DTYPE", "AUTO", "kv_cache_dtype", KvCacheDtype.AUTO),
    ("ATOM_TIER_QUICK_REDUCE", "int6", "quick_reduce", QuickReduce.INT6),
    ("ATOM_TIER_FUSED_QK_NORM_ROPE", "0", "fused_qk_norm_rope", False),
    ("ATOM_TIER_CONNECTOR", "LMCache", "connector", ConnectorEngine.LMCACHE),
    ("ATOM_TIER_DRAM_GB", "64", "dram_gb", 64.0),
    ("ATOM_TIER_DRAM_ENABLED", "false", "dram_enabled", False),
    ("ATOM_TIER_EVICTION", "ARC", "eviction", EvictionPolicy.ARC),
    ("ATOM_TIER_NVME_PATH", "/mnt/nvme/kv", "nvme_path", Path("/mnt/nvme/kv")),
    ("ATOM_TIER_NVME_GB", "512.5", "nvme_gb", 512.5),
    ("ATOM_TIER_WEIGHTS_ID", "ckpt-2026-12-01", "weights_id", "ckpt-2026-12-01"),
    ("ATOM_TIER_SHARED_URL", "redis://cache:6379", "shared_url", "redis://cache:6379"),
    ("ATOM_TIER_SHARED_PREFIX", "team-a", "shared_prefix", "team-a"),
    ("ATOM_TIER_SHARED_SECRET", "s3cret", "shared_secret", SecretStr("s3cret")),
    ("ATOM_TIER_SHARED_SECRET_FILE", "/run/secret", "shared_secret_file", Path("/run/secret")),
    ("ATOM_TIER_SHARED_TIMEOUT_S", "0.25", "shared_timeout_s", 0.25),
    ("ATOM_TIER_SHARED_LOOKUP_BUDGET_MS", "0.5", "shared_lookup_budget_ms", 0.5),
    ("ATOM_TIER_CHUNK_TOKENS", "512", "chunk_tokens", 512),
    ("ATOM_TIER_SAVE_DECODE", "yes", "save_decode", True),
    ("ATOM_TIER_CPU_PLATFORM", "on", "cpu_platform", True),
    ("ATOM_TIER_RELOAD_CONCURRENCY", "4", "reload_concurrency", 4),
    ("ATOM_TIER_LMCACHE_TELEMETRY", "true", "lmcache_telemetry", True),
    ("ATOM_TIER_ALLOW_LMCACHE_FALLBACK", "1", "allow_lmcache_fallback", True),
    ("ATOM_TIER_ALLOW_LMCACHE_SAVE_DECODE", "1", "allow_lmcache_save_decode", True),
]

# The names users copy from the published LMCache/AITER/ATOM recipes.
FALLBACK_CASES = [
    ("LMCACHE_LOCAL_CPU", "False", "dram_enabled", False),
    ("LMCACHE_MAX_LOCAL_CPU_SIZE", "5.0", "dram_gb", 5.0),
    ("LMCACHE_LOCAL_DISK", "file:///mnt/nvme/lmcache/", "nvme_path", Path("/mnt/nvme/lmcache")),
    ("LMCACHE_MAX_LOCAL_DISK_SIZE", "100", "nvme_gb", 100.0),
    ("LMCACHE_CHUNK_SIZE", "256", "chunk_tokens", 256),
    ("LMCACHE_SAVE_DECODE_CACHE", "True", "save_decode", True),
    ("AITER_QUICK_REDUCE_QUANTIZATION", "NONE", "quick_reduce", QuickReduce.NONE),
    ("ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION", "0", "fused_qk_norm_rope", False),
    ("LMCACHE_TRACK_USAGE", "true", "lmcache_telemetry", True),
    ("LMCACHE_REMOTE_URL", "redis://lmc:6379", "shared_url", "redis://lmc:6379"),
]


def test_every_field_has_a_case() -> None:
    covered = {case[2] for case in ATOM_TIER_CASES}
    assert covered == set(AtomTierSettings.model_fields)


@pytest.mark.parametrize(("variable", "raw", "field", "expected"), ATOM_TIER_CASES)
def test_atom_tier_variable(variable: str, raw: str, field: str, expected: object) -> None:
    assert getattr(load_settings({variable: raw}), field) == expected


@pytest.mark.parametrize(("variable", "raw", "field", "expected"), ATOM_TIER_CASES)
def test_atom_tier_variable_from_process_environment(
    variable: str, raw: str, field: str, expected: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, raw)
    assert getattr(load_settings(), field) == expected


@pytest.mark.parametrize(("variable", "raw", "field", "expected"), FALLBACK_CASES)
def test_recipe_fallback(variable: str, raw: str, field: str, expected: object) -> None:
    assert getattr(load_settings({variable: raw}), field) == expected


@pytest.mark.parametrize(("variable", "raw", "field", "expected"), FALLBACK_CASES)
def test_atom_tier_name_wins_over_fallback(
    variable: str, raw: str, field: str, expected: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = next(case for case in ATOM_TIER_CASES if case[2] == field)
    monkeypatch.setenv(variable, raw)
    monkeypatch.setenv(own[0], own[1])
    assert getattr(load_settings(), field) == own[3]
    assert getattr(load_settings({variable: raw, own[0]: own[1]}), field) == own[3]


@pytest.mark.parametrize(("aiter_name", "vllm_name"), [("FP8", "INT8"), ("INT3", "INT4")])
def test_aiter_only_quick_reduce_names_map_to_vllm(aiter_name: str, vllm_name: str) -> None:
    settings = load_settings({"AITER_QUICK_REDUCE_QUANTIZATION": aiter_name})
    assert settings.quick_reduce is QuickReduce(vllm_name)


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.connector is ConnectorEngine.NATIVE
    assert settings.quick_reduce is QuickReduce.INT4
    assert settings.kv_cache_dtype is KvCacheDtype.FP8
    assert settings.dram_tier_gb is None and not settings.nvme_enabled
    assert settings.chunk_tokens == 256 and not settings.save_decode


def test_dram_off_and_nvme_off_by_recipe_conventions() -> None:
    assert load_settings({"LMCACHE_LOCAL_CPU": "false", "ATOM_TIER_DRAM_GB": "8"}).dram_tier_gb == 0
    nvme_zero = load_settings({"LMCACHE_LOCAL_DISK": "/mnt/x", "LMCACHE_MAX_LOCAL_DISK_SIZE": "0"})
    assert not nvme_zero.nvme_enabled


def test_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOM_TIER_DRAM_GB", "")
    monkeypatch.setenv("LMCACHE_MAX_LOCAL_CPU_SIZE", "3")
    assert load_settings().dram_gb == 3.0


@pytest.mark.parametrize(
    ("environ", "variable", "allowed"),
    [
        (
            {"ATOM_TIER_QUICK_REDUCE": "INT5"},
            "ATOM_TIER_QUICK_REDUCE",
            "INT4, INT6, INT8, FP, NONE",
        ),
        ({"AITER_QUICK_REDUCE_QUANTIZATION": "INT2"}, "AITER_QUICK_REDUCE_QUANTIZATION", "INT4"),
        ({"ATOM_TIER_CONNECTOR": "redis"}, "ATOM_TIER_CONNECTOR", "native, lmcache, off"),
        ({"ATOM_TIER_KV_CACHE_DTYPE": "int8"}, "ATOM_TIER_KV_CACHE_DTYPE", "fp8, fp8_e4m3"),
        ({"ATOM_TIER_EVICTION": "fifo"}, "ATOM_TIER_EVICTION", "lru, arc"),
        ({"ATOM_TIER_DISABLE": "maybe"}, "ATOM_TIER_DISABLE", "true or false"),
        ({"ATOM_TIER_DRAM_GB": "lots"}, "ATOM_TIER_DRAM_GB", "a number >= 0"),
        ({"LMCACHE_MAX_LOCAL_CPU_SIZE": "-1"}, "LMCACHE_MAX_LOCAL_CPU_SIZE", "a number >= 0"),
        ({"ATOM_TIER_NVME_GB": "-5"}, "ATOM_TIER_NVME_GB", "a number >= 0"),
        ({"ATOM_TIER_SHARED_LOOKUP_BUDGET_MS": "-2"}, "ATOM_TIER_SHARED_LOOKUP_BUDGET_MS", ">= 0"),
        ({"ATOM_TIER_CHUNK_TOKENS": "0"}, "ATOM_TIER_CHUNK_TOKENS", "an integer > 0"),
        ({"LMCACHE_CHUNK_SIZE": "2.5"}, "LMCACHE_CHUNK_SIZE", "an integer > 0"),
        ({"ATOM_TIER_RELOAD_CONCURRENCY": "0"}, "ATOM_TIER_RELOAD_CONCURRENCY", "an integer > 0"),
    ],
)
def test_bad_value_names_variable_value_and_allowed(
    environ: dict[str, str], variable: str, allowed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SettingsError) as explicit:
        load_settings(environ)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as from_process:
        load_settings()
    for message in (str(explicit.value), str(from_process.value)):
        assert message.startswith(f"{variable}=")
        assert allowed in message
        assert "\n" not in message  # one message, not pydantic's multi-line dump
        value = next(iter(environ.values()))
        assert value.upper() in message.upper()


def test_foreign_env_reads_owned_names_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    monkeypatch.setenv("ATOM_DISABLE_VLLM_PLUGIN", "1")
    env = load_foreign_env()
    assert env.pythonhashseed == "0" and env.atom_disable_vllm_plugin == "1"
    assert load_foreign_env({"PYTHONHASHSEED": "7"}).pythonhashseed == "7"
    assert load_foreign_env({}).pythonhashseed is None


def test_settings_fields_lists_every_variable() -> None:
    rows = settings_fields()
    assert [row[0] for row in rows] == [case[0] for case in ATOM_TIER_CASES]
    fallbacks = {f for row in rows for f in row[1]}
    assert fallbacks == {case[0] for case in FALLBACK_CASES}
    assert all(row[3] for row in rows), "every setting needs a description"


def test_bad_values_are_listed_per_variable() -> None:
    with pytest.raises(SettingsError) as failed:
        load_settings({"ATOM_TIER_EVICTION": "fifo", "LMCACHE_CHUNK_SIZE": "2.5"})
    variables = {variable for variable, _ in failed.value.problems}
    assert variables == {"ATOM_TIER_EVICTION", "LMCACHE_CHUNK_SIZE"}
    for variable, text in failed.value.problems:
        assert text.startswith(f"{variable}=") and text in str(failed.value)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"ATOM_TIER_DRAM_G": "5"}, {"ATOM_TIER_DRAM_G": "ATOM_TIER_DRAM_GB"}),
        ({"ATOM_TIER_CPU_PLATFROM": "1"}, {"ATOM_TIER_CPU_PLATFROM": "ATOM_TIER_CPU_PLATFORM"}),
        ({"ATOM_TIER_DISABLED": "1"}, {"ATOM_TIER_DISABLED": "ATOM_TIER_DISABLE"}),
        ({"ATOM_TIER_FROBNICATE": "1"}, {"ATOM_TIER_FROBNICATE": None}),
        # Known names in any case (reading ignores case), other prefixes: not reported.
        ({"atom_tier_dram_gb": "5", "LMCACHE_CHUNK_SIZE": "256", "VLLM_X": "1"}, {}),
    ],
)
def test_unknown_atom_tier_variables_name_the_closest_setting(
    environ: dict[str, str], expected: dict[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert unknown_variables(environ) == expected
    for name in [n for n in os.environ if n.upper().startswith("ATOM_TIER_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert unknown_variables() == expected


def test_every_settings_variable_is_known() -> None:
    """Known names come from the settings model: no variable of the table is ever flagged."""
    names = [name for row in settings_fields() for name in (row[0], *row[1])]
    assert unknown_variables(dict.fromkeys(names, "1")) == {}


def test_variable_of_names_the_variable_that_was_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert variable_of("chunk_tokens", {}) == "ATOM_TIER_CHUNK_TOKENS"
    assert variable_of("chunk_tokens", {"LMCACHE_CHUNK_SIZE": "64"}) == "LMCACHE_CHUNK_SIZE"
    monkeypatch.delenv("ATOM_TIER_CHUNK_TOKENS", raising=False)
    monkeypatch.setenv("LMCACHE_CHUNK_SIZE", "64")
    assert variable_of("chunk_tokens") == "LMCACHE_CHUNK_SIZE"


def test_the_shared_secret_is_never_shown() -> None:
    settings = load_settings({"ATOM_TIER_SHARED_SECRET": "hunter2-abc"})
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())
