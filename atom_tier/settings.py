"""Every knob atom-tier has, read from the environment in this one place.

Operators tune atom-tier with environment variables (a Kubernetes manifest sets env, not code).
Each field is read from ``ATOM_TIER_<NAME>``; some also accept the names users already copy from
the published MI300X recipes (LMCache's and AITER's), with the ``ATOM_TIER_*`` name winning.

No other module of atom-tier reads ``os.environ``: they call :func:`load_settings` (atom-tier's
own knobs) or :func:`load_foreign_env` (variables owned by Python, vLLM, AITER or ATOM that
atom-tier consults).  Modules may still *set* variables that AITER/vLLM read at import time.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from atom_tier.choices import (
    ConnectorEngine,
    EvictionPolicy,
    KvCacheDtype,
    QuickReduce,
    SettingsError,
    allowed_values,
)

ENV_PREFIX = "ATOM_TIER_"
__all__ = [
    "AtomTierSettings",
    "ConnectorEngine",
    "EvictionPolicy",
    "ForeignEnv",
    "KvCacheDtype",
    "QuickReduce",
    "SettingsError",
    "load_foreign_env",
    "load_settings",
    "settings_fields",
    "unknown_variables",
    "variable_of",
]


# True while validating an explicit mapping: the process environment must not leak in.
_EXPLICIT_ONLY: ContextVar[bool] = ContextVar("atom_tier_explicit_settings", default=False)


class _EnvSettings(BaseSettings):
    """Reads the process environment, unless validating an explicit mapping."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,) if _EXPLICIT_ONLY.get() else (init_settings, env_settings)


def _validate_explicit(model: type[BaseSettings], values: dict[str, Any]) -> Any:
    token = _EXPLICIT_ONLY.set(True)
    try:
        return model(**values)
    finally:
        _EXPLICIT_ONLY.reset(token)


# AITER's quick-reduce names without a vLLM equivalent → the nearest vLLM setting.
AITER_ONLY_QUICK_REDUCE = {"FP8": "INT8", "INT3": "INT4"}


def _env(name: str, *fallbacks: str) -> Any:
    """Field aliases: the ATOM_TIER_ name first, so it wins over recipe fallbacks."""
    return AliasChoices(ENV_PREFIX + name, *fallbacks)


class AtomTierSettings(_EnvSettings):
    """atom-tier's settings. Field descriptions become the README's settings table."""

    model_config = SettingsConfigDict(
        case_sensitive=False,
        extra="ignore",
        populate_by_name=True,
        frozen=True,
        env_ignore_empty=True,
    )

    disable: bool = Field(
        False,
        validation_alias=_env("DISABLE"),
        description="Turn atom-tier off entirely: vLLM behaves exactly as without it.",
    )
    allow_eager: bool = Field(
        False,
        validation_alias=_env("ALLOW_EAGER"),
        description="Escape hatch: honour `--enforce-eager` instead of forcing CUDA graphs "
        "to FULL_AND_PIECEWISE (eager costs 3-5x throughput).",
    )
    kv_cache_dtype: KvCacheDtype = Field(
        KvCacheDtype.FP8,
        validation_alias=_env("KV_CACHE_DTYPE"),
        description="KV cache dtype used when `--kv-cache-dtype` is left at `auto`; "
        "`auto` keeps vLLM's choice.",
    )
    quick_reduce: QuickReduce = Field(
        QuickReduce.INT4,
        validation_alias=_env("QUICK_REDUCE", "AITER_QUICK_REDUCE_QUANTIZATION"),
        description="Quick all-reduce quantization for tensor parallelism on ROCm; "
        "`NONE` disables it. AITER's `FP8` and `INT3` are read as `INT8` and `INT4` for vLLM.",
    )
    fused_qk_norm_rope: bool = Field(
        True,
        validation_alias=_env("FUSED_QK_NORM_ROPE", "ATOM_ENABLE_QK_NORM_ROPE_CACHE_QUANT_FUSION"),
        description="Fused QK-RMSNorm + RoPE + FP8 KV-cache write pass, where AITER "
        "supports the model's head dim.",
    )
    connector: ConnectorEngine = Field(
        ConnectorEngine.NATIVE,
        validation_alias=_env("CONNECTOR"),
        description="Tiered KV cache engine: `native` (vLLM offloading + atom-tier NVMe "
        "tier), `lmcache`, or `off`.",
    )
    dram_gb: float | None = Field(
        None,
        ge=0,
        validation_alias=_env("DRAM_GB", "LMCACHE_MAX_LOCAL_CPU_SIZE"),
        description="Host DRAM tier size in GB of 2^30 bytes, for the whole server (0 turns "
        "the tier off); unset: 40% of host memory (this server's share of the node's GPUs), "
        "at most half of /dev/shm.",
    )
    dram_enabled: bool = Field(
        True,
        validation_alias=_env("DRAM_ENABLED", "LMCACHE_LOCAL_CPU"),
        description="Keep a host DRAM tier at all (false is the same as `DRAM_GB=0`).",
    )
    eviction: EvictionPolicy = Field(
        EvictionPolicy.LRU,
        validation_alias=_env("EVICTION"),
        description="Eviction policy of the DRAM tier: `lru`, `arc`, or `sticky` (keeps a "
        "stable set of returning sessions when the tier is smaller than what agentic users "
        "cycle through; see docs/tuning.md).",
    )
    nvme_path: Path | None = Field(
        None,
        validation_alias=_env("NVME_PATH", "LMCACHE_LOCAL_DISK"),
        description="Directory of the NVMe tier; unset: no NVMe tier.",
    )
    nvme_gb: float | None = Field(
        None,
        ge=0,
        validation_alias=_env("NVME_GB", "LMCACHE_MAX_LOCAL_DISK_SIZE"),
        description="Hard capacity cap of the NVMe tier in GB of 2^30 bytes; unset: sized "
        "automatically from the free space at start-up.",
    )
    weights_id: str | None = Field(
        None,
        validation_alias=_env("WEIGHTS_ID"),
        description="A version of the served weights, used in the NVMe tier's namespace instead "
        "of the sampled weights fingerprint; change it whenever the weights change.",
    )
    shared_url: str | None = Field(
        None,
        validation_alias=_env("SHARED_URL", "LMCACHE_REMOTE_URL"),
        description="Valkey/Redis shared tier behind DRAM and NVMe: `redis://`, `rediss://` "
        "(TLS), `unix://`, a comma-separated list of cluster nodes, or `redis+cluster://`; "
        "unset: no shared tier. Credentials in it are never logged.",
    )
    shared_prefix: str = Field(
        "atom-tier",
        min_length=1,
        validation_alias=_env("SHARED_PREFIX"),
        description="Prefix of every shared-tier key, so tenants and deployments never collide.",
    )
    shared_secret: SecretStr | None = Field(
        None,
        validation_alias=_env("SHARED_SECRET"),
        description="Shared secret: every shared-tier chunk is signed with it and unsigned or "
        "mis-signed chunks are misses. Every replica sharing chunks needs the same one.",
    )
    shared_secret_file: Path | None = Field(
        None,
        validation_alias=_env("SHARED_SECRET_FILE"),
        description="File holding the shared secret (a Kubernetes secret mount), instead of "
        "`ATOM_TIER_SHARED_SECRET`.",
    )
    shared_timeout_s: float = Field(
        1.0,
        gt=0,
        validation_alias=_env("SHARED_TIMEOUT_S"),
        description="Timeout of one shared-tier operation; a timeout opens the circuit breaker.",
    )
    shared_lookup_budget_ms: float = Field(
        2.0,
        ge=0,
        validation_alias=_env("SHARED_LOOKUP_BUDGET_MS"),
        description="Scheduler time per step the shared tier may spend asking the server "
        "whether a new prompt's first chunk is there (a miss then costs no deferred step); "
        "0: every shared-tier lookup is answered in the background, one step later.",
    )
    chunk_tokens: int = Field(
        256,
        gt=0,
        validation_alias=_env("CHUNK_TOKENS", "LMCACHE_CHUNK_SIZE"),
        description="Tokens per offloaded chunk: a multiple of vLLM's KV block size (by "
        "default 16 tokens on GPUs, 128 on CPU), checked when the server's config is built.",
    )
    save_decode: bool = Field(
        False,
        validation_alias=_env("SAVE_DECODE", "LMCACHE_SAVE_DECODE_CACHE"),
        description="Also save decode-phase KV (prompt KV only by default: saving decode "
        "KV stalled decoding 100-250 s in published runs).",
    )
    cpu_platform: bool = Field(
        False,
        validation_alias=_env("CPU_PLATFORM"),
        description="Opt-in CPU development platform that applies atom-tier's policy to "
        "CPU vLLM (development and CI).",
    )
    reload_concurrency: int | None = Field(
        None,
        gt=0,
        validation_alias=_env("RELOAD_CONCURRENCY"),
        description="Prefix reloads expected at once, for the DRAM-tier size guard; unset: "
        "as many full-length prefixes as the device KV cache holds.",
    )
    lmcache_telemetry: bool = Field(
        False,
        validation_alias=_env("LMCACHE_TELEMETRY", "LMCACHE_TRACK_USAGE"),
        description="Let LMCache send its anonymous usage telemetry (engine `lmcache`); off "
        "by default so production servers do not call out.",
    )
    allow_lmcache_fallback: bool = Field(
        False,
        validation_alias=_env("ALLOW_LMCACHE_FALLBACK"),
        description="Escape hatch: start the `lmcache` engine although LMCache's native ops "
        "are missing or not built for this GPU (its torch fallback was 1.7x slower than no "
        "cache).",
    )
    allow_lmcache_save_decode: bool = Field(
        False,
        validation_alias=_env("ALLOW_LMCACHE_SAVE_DECODE"),
        description="Escape hatch: let the `lmcache` engine save decode-phase KV when "
        "`ATOM_TIER_SAVE_DECODE` is on (it stalled decoding 100-250 s in published runs).",
    )

    @field_validator("quick_reduce", mode="before")
    @classmethod
    def _quick_reduce_name(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = value.strip().upper()
        # Recipes set AITER's own names; vLLM has no FP8 or INT3 quick reduce. AITER itself
        # keeps the operator's value (its variable is only ever set if absent).
        return AITER_ONLY_QUICK_REDUCE.get(value, value)

    @field_validator("kv_cache_dtype", "connector", "eviction", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("nvme_path", mode="before")
    @classmethod
    def _strip_file_scheme(cls, value: Any) -> Any:
        # LMCache recipes write LMCACHE_LOCAL_DISK as "file:///mnt/nvme/cache/".
        if isinstance(value, str):
            return value.strip().removeprefix("file://") or None
        return value

    @property
    def dram_tier_gb(self) -> float | None:
        """DRAM tier size: 0 when turned off, None when it is to be sized automatically."""
        return 0.0 if not self.dram_enabled else self.dram_gb

    @property
    def nvme_enabled(self) -> bool:
        # LMCache recipes turn the disk tier off with a size of 0.
        return self.nvme_path is not None and self.nvme_gb != 0


class ForeignEnv(_EnvSettings):
    """Variables owned by others (Python, vLLM, AITER, ATOM) that atom-tier consults."""

    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", frozen=True, populate_by_name=True
    )

    pythonhashseed: str | None = Field(None, validation_alias="PYTHONHASHSEED")
    atom_disable_vllm_plugin: str | None = Field(None, validation_alias="ATOM_DISABLE_VLLM_PLUGIN")
    vllm_target_device: str | None = Field(None, validation_alias="VLLM_TARGET_DEVICE")
    vllm_plugins: str | None = Field(None, validation_alias="VLLM_PLUGINS")
    vllm_rocm_use_aiter: str | None = Field(None, validation_alias="VLLM_ROCM_USE_AITER")
    vllm_rocm_quick_reduce: str | None = Field(
        None, validation_alias="VLLM_ROCM_QUICK_REDUCE_QUANTIZATION"
    )
    aiter_quick_reduce: str | None = Field(None, validation_alias="AITER_QUICK_REDUCE_QUANTIZATION")


def _source_variable(field: str, environ: Mapping[str, str]) -> str:
    """The variable a field's value came from (the first alias present), for error messages."""
    alias = AtomTierSettings.model_fields[field].validation_alias
    names = [n for n in getattr(alias, "choices", []) if isinstance(n, str)]
    upper_env = {k.upper() for k in environ}
    for name in names:
        if name.upper() in upper_env:
            return name
    return names[0] if names else ENV_PREFIX + field.upper()


def variable_of(field: str, environ: Mapping[str, str] | None = None) -> str:
    """The variable a setting was read from (its ATOM_TIER_ name when none is set)."""
    return _source_variable(field, os.environ if environ is None else environ)


def _field_of(location: str) -> str:
    """The field an error location names: a field name, or one of its variable names."""
    for name, field in AtomTierSettings.model_fields.items():
        aliases = [str(a).upper() for a in getattr(field.validation_alias, "choices", [])]
        if location == name or location.upper() in aliases:
            return name
    return location


def load_settings(environ: Mapping[str, str] | None = None) -> AtomTierSettings:
    """Read atom-tier's settings; a bad value raises SettingsError naming the variable."""
    env = os.environ if environ is None else environ
    try:
        if environ is None:
            return AtomTierSettings()
        # An explicit mapping: validate it alone, without the process environment.
        values = {}
        for name, field in AtomTierSettings.model_fields.items():
            for alias in getattr(field.validation_alias, "choices", []):
                hit = next((v for k, v in env.items() if k.upper() == str(alias).upper()), None)
                if hit:  # empty counts as unset, as for the process environment
                    values[name] = hit
                    break
        settings: AtomTierSettings = _validate_explicit(AtomTierSettings, values)
        return settings
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field_name = _field_of(str(error["loc"][0]))
            if field_name not in AtomTierSettings.model_fields:
                problems.append((field_name, f"{field_name}: {error['msg']}"))
                continue
            variable = _source_variable(field_name, env)
            value = error.get("input")
            allowed = allowed_values(AtomTierSettings.model_fields[field_name])
            problems.append((variable, f"{variable}={value!r} is not valid: expected {allowed}"))
        raise SettingsError(problems) from None


def load_foreign_env(environ: Mapping[str, str] | None = None) -> ForeignEnv:
    """Read the variables of Python, vLLM, AITER and ATOM that atom-tier consults."""
    if environ is None:
        return ForeignEnv()
    names = {f.validation_alias: n for n, f in ForeignEnv.model_fields.items()}
    env: ForeignEnv = _validate_explicit(
        ForeignEnv, {names[k]: v for k, v in environ.items() if k in names}
    )
    return env


def settings_fields() -> list[tuple[str, list[str], str, str]]:
    """(variable, fallback variables, default, description) for each setting, in order."""
    rows = []
    for field in AtomTierSettings.model_fields.values():
        names = [str(n) for n in getattr(field.validation_alias, "choices", [])]
        default = field.default
        shown = "unset" if default is None else getattr(default, "value", default)
        if isinstance(shown, bool):
            shown = str(shown).lower()
        rows.append((names[0], names[1:], str(shown), field.description or ""))
    return rows


def unknown_variables(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """``ATOM_TIER_*`` variables that name no setting (a misspelling would be ignored without a
    word) -> the closest setting's variable, or None. Case is ignored, as when reading."""
    env = os.environ if environ is None else environ
    # Compared without the prefix, which every candidate shares and would make all look close.
    names = [name for row in settings_fields() for name in (row[0], *row[1])]
    known = [name.removeprefix(ENV_PREFIX) for name in names if name.startswith(ENV_PREFIX)]
    unknown: dict[str, str | None] = {}
    for name in sorted(env):
        suffix = name.upper().removeprefix(ENV_PREFIX)
        if name.upper().startswith(ENV_PREFIX) and suffix not in known:
            close = difflib.get_close_matches(suffix, known, n=1, cutoff=0.6)
            unknown[name] = ENV_PREFIX + close[0] if close else None
    return unknown
