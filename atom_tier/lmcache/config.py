"""atom-tier settings -> LMCache's configuration, in one place (engine ``lmcache``).

Mechanism. The configuration travels as ``lmcache.<key>`` entries of vLLM's
``kv_connector_extra_config`` (see :mod:`atom_tier.lmcache.kv_transfer`), not as
``LMCACHE_*`` environment variables or a ``LMCACHE_CONFIG_FILE``, because:

* it is part of the ``VllmConfig`` that vLLM hands to the engine core and every worker, so
  no process can miss it, whatever its start method, and vLLM logs it with its config;
* LMCache's vLLM adapter (``LMCacheConnectorV1Impl._apply_extra_config``, LMCache 0.5.6, and
  vLLM's bundled copy) applies these keys *after* its file and environment, through its own
  validating setter, so atom-tier's settings are the one source of truth: a stray
  ``LMCACHE_MAX_LOCAL_CPU_SIZE`` cannot disagree with them (the recipe names are read by
  :mod:`atom_tier.settings` as fallbacks of the same fields instead);
* nothing has to mutate ``os.environ`` before LMCache reads it.

The exception is usage telemetry: LMCache reads it only from ``LMCACHE_TRACK_USAGE`` (exactly
``false`` turns it off). :func:`lmcache_environment` gives that variable and
:func:`apply_lmcache_environment` sets it; atom-tier's general plugin must call the latter in
every vLLM process (off unless ``ATOM_TIER_LMCACHE_TELEMETRY``/``LMCACHE_TRACK_USAGE`` is true).

Sizes. ``ATOM_TIER_DRAM_GB`` and ``ATOM_TIER_NVME_GB`` are sizes for the whole server, as for
the native engine (and as the DRAM-memory guard checks them); LMCache's sizes are per worker
(every GPU worker runs its own LMCache engine), so they are divided by the server's workers on
this host. GB are LMCache's GB: 2**30 bytes. Operators coming from the recipe: a
``LMCACHE_MAX_LOCAL_CPU_SIZE`` meant per worker there and means per server here.

Hashing. LMCache's default chunk hash ``builtin`` is not a vLLM hash name, so with vLLM 0.32 it
falls back to Python's ``hash()``, keyed by the interpreter's hash secret: chunk keys then agree
between processes only if each was *started* with a fixed ``PYTHONHASHSEED`` (a seed set
in-process comes too late). atom-tier asks LMCache for vLLM's own prefix-cache hash function
instead, seeded from the ``PYTHONHASHSEED`` value read when LMCache starts (set by atom-tier's
plugin in every vLLM process), so keys agree across processes and restarts, and LMCache's
re-initialisation of vLLM's root hash gives vLLM the same root it had.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from atom_tier.settings import AtomTierSettings
from atom_tier.sizing import GIB, MIB  # LMCache converts its GB sizes with * 1024**3 too

EXTRA_PREFIX = "lmcache."
TELEMETRY_VARIABLE = "LMCACHE_TRACK_USAGE"
# vLLM's default prefix_caching_hash_algo; used when the VllmConfig is not known yet.
DEFAULT_HASH_ALGORITHM = "sha256"
# LMCache's own default DRAM size (GB per worker), used when host memory cannot be read.
LMCACHE_DEFAULT_CPU_GB = 5.0
# With the DRAM tier off, LMCache still needs its CPU backend as the disk tier's staging
# buffer (its LocalDiskBackend asserts one exists); it keeps no chunks there (local_cpu off).
STAGING_CPU_GB = 1.0


class LMCacheConfigError(ValueError):
    """The settings cannot make a working LMCache configuration; names the settings and fix."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}: {fix}")
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True)
class HostShare:
    """What sizes are divided by and computed from on this host (probed by kv_transfer).

    ``workers``: GPU workers of this server on this host (one LMCache engine each).
    ``auto_cpu_bytes``/``auto_disk_bytes``: the automatic DRAM/disk tier sizes for the whole
    server, used when the size settings are unset; None where they cannot be told.
    """

    workers: int = 1
    auto_cpu_bytes: int | None = None
    auto_disk_bytes: int | None = None


@dataclass(frozen=True)
class LMCacheConfig:
    """LMCache configuration keys (LMCache's names) atom-tier sets, plus telemetry."""

    chunk_size: int
    local_cpu: bool
    max_local_cpu_size: float
    local_disk: str | None
    max_local_disk_size: float
    save_decode_cache: bool
    pre_caching_hash_algorithm: str
    track_usage: bool
    workers: int = 1
    cpu_source: str = ""
    disk_source: str = ""

    def config_keys(self) -> dict[str, Any]:
        """LMCache config names -> values, as ``LMCacheEngineConfig`` attributes."""
        return {
            "chunk_size": self.chunk_size,
            "local_cpu": self.local_cpu,
            "max_local_cpu_size": self.max_local_cpu_size,
            "local_disk": self.local_disk,
            "max_local_disk_size": self.max_local_disk_size,
            "save_decode_cache": self.save_decode_cache,
            "pre_caching_hash_algorithm": self.pre_caching_hash_algorithm,
        }

    def extra_config(self) -> dict[str, Any]:
        """The ``kv_connector_extra_config`` entries LMCache's vLLM adapter applies."""
        return {EXTRA_PREFIX + key: value for key, value in self.config_keys().items()}

    def environment(self) -> dict[str, str]:
        return {TELEMETRY_VARIABLE: "true" if self.track_usage else "false"}

    def describe(self) -> str:
        """One paragraph for ``doctor``: what LMCache will run with, and where sizes came from."""
        per = f"per worker, {self.workers} worker{'s' if self.workers != 1 else ''}"
        cpu = (
            f"DRAM tier {self.max_local_cpu_size:.2f} GB ({per}; {self.cpu_source})"
            if self.local_cpu
            else f"DRAM tier off ({self.max_local_cpu_size:.2f} GB staging buffer for the disk)"
        )
        disk = (
            f"disk tier {self.local_disk} capped at {self.max_local_disk_size:.2f} GB "
            f"({per}; {self.disk_source})"
            if self.local_disk
            else "disk tier off"
        )
        keys = ", ".join(f"{k}={v}" for k, v in self.config_keys().items())
        return (
            f"{cpu}; {disk}; chunks of {self.chunk_size} tokens; decode KV "
            f"{'saved' if self.save_decode_cache else 'not saved'}; chunk hash "
            f"{self.pre_caching_hash_algorithm}; telemetry {'on' if self.track_usage else 'off'}"
            f" ({TELEMETRY_VARIABLE}={self.environment()[TELEMETRY_VARIABLE]}). LMCache keys: "
            f"{keys}"
        )


def per_worker_gb(total_bytes: float, workers: int) -> float:
    """A server total split over its workers, in LMCache GB, rounded down to whole MiB."""
    mib = math.floor(total_bytes / max(workers, 1) / MIB)
    return mib * MIB / GIB


def _cpu_tier(settings: AtomTierSettings, host: HostShare) -> tuple[bool, float, str]:
    """(local_cpu, max_local_cpu_size, where the size came from)."""
    size_gb = settings.dram_tier_gb
    if size_gb == 0:
        if not settings.nvme_enabled:
            raise LMCacheConfigError(
                "the lmcache engine has no tier to keep KV in: the DRAM tier is off "
                f"(ATOM_TIER_DRAM_GB={settings.dram_gb}, ATOM_TIER_DRAM_ENABLED="
                f"{str(settings.dram_enabled).lower()}) and no disk tier is set "
                "(ATOM_TIER_NVME_PATH)",
                "give ATOM_TIER_DRAM_GB or ATOM_TIER_NVME_PATH a size, or set "
                "ATOM_TIER_CONNECTOR=off",
            )
        return False, STAGING_CPU_GB, "DRAM tier off"
    if size_gb is not None:
        gb = per_worker_gb(size_gb * GIB, host.workers)
        return True, gb, f"ATOM_TIER_DRAM_GB={size_gb:g} for the server"
    if not host.auto_cpu_bytes:
        return True, LMCACHE_DEFAULT_CPU_GB, "host memory unknown: LMCache's default"
    gb = per_worker_gb(host.auto_cpu_bytes, host.workers)
    return True, gb, "sized automatically from host memory"


def _disk_tier(settings: AtomTierSettings, host: HostShare) -> tuple[str | None, float, str]:
    """(local_disk, max_local_disk_size, where the size came from)."""
    if not settings.nvme_enabled or settings.nvme_path is None:
        return None, 0.0, ""
    path = str(settings.nvme_path)
    if "," in path:  # LMCache splits local_disk at commas into several directories
        raise LMCacheConfigError(
            f"ATOM_TIER_NVME_PATH={path} contains a comma, which LMCache reads as a list of "
            "directories",
            "use a directory whose path has no comma",
        )
    if settings.nvme_gb is not None:
        gb = per_worker_gb(settings.nvme_gb * GIB, host.workers)
        source = f"ATOM_TIER_NVME_GB={settings.nvme_gb:g} for the server"
    elif host.auto_disk_bytes:
        gb = per_worker_gb(host.auto_disk_bytes, host.workers)
        source = "sized automatically from the free space"
    else:
        raise LMCacheConfigError(
            "cannot size the disk tier automatically: the free space of "
            f"ATOM_TIER_NVME_PATH={path} cannot be read or is below the reserve",
            "create the directory on the NVMe mount, or set ATOM_TIER_NVME_GB",
        )
    if gb <= 0:
        raise LMCacheConfigError(
            f"the disk tier at ATOM_TIER_NVME_PATH={path} gets less than 1 MiB per worker "
            f"over {host.workers} workers",
            "raise ATOM_TIER_NVME_GB",
        )
    return path, gb, source


def lmcache_config(
    settings: AtomTierSettings,
    host: HostShare | None = None,
    hash_algorithm: str = DEFAULT_HASH_ALGORITHM,
) -> LMCacheConfig:
    """Translate settings into LMCache's configuration (pure: probing is the caller's job)."""
    host = host or HostShare()
    if host.workers < 1:
        raise LMCacheConfigError(
            f"a server has at least one worker, got {host.workers}", "pass workers >= 1"
        )
    local_cpu, cpu_gb, cpu_source = _cpu_tier(settings, host)
    if cpu_gb <= 0:
        raise LMCacheConfigError(
            f"the DRAM tier gets less than 1 MiB per worker over {host.workers} workers",
            "raise ATOM_TIER_DRAM_GB",
        )
    local_disk, disk_gb, disk_source = _disk_tier(settings, host)
    return LMCacheConfig(
        chunk_size=settings.chunk_tokens,
        local_cpu=local_cpu,
        max_local_cpu_size=cpu_gb,
        local_disk=local_disk,
        max_local_disk_size=disk_gb,
        save_decode_cache=settings.save_decode,
        pre_caching_hash_algorithm=hash_algorithm,
        track_usage=settings.lmcache_telemetry,
        workers=host.workers,
        cpu_source=cpu_source,
        disk_source=disk_source,
    )


def lmcache_environment(settings: AtomTierSettings) -> dict[str, str]:
    """The variables LMCache reads only from the environment: usage telemetry, off by default."""
    return {TELEMETRY_VARIABLE: "true" if settings.lmcache_telemetry else "false"}


def apply_lmcache_environment(
    settings: AtomTierSettings, environ: MutableMapping[str, str]
) -> dict[str, str]:
    """Set :func:`lmcache_environment` in ``environ`` (``os.environ`` in vLLM processes).

    Overwrites: the settings already read ``LMCACHE_TRACK_USAGE`` as the fallback of
    ``ATOM_TIER_LMCACHE_TELEMETRY``, so the value written is the operator's choice, normalised
    to the exact ``true``/``false`` LMCache compares against. Harmless where LMCache is unused.
    """
    values = lmcache_environment(settings)
    environ.update(values)
    return values
