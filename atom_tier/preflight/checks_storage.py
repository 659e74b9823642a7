"""Checks of the cache tiers' resources: host memory for DRAM, the NVMe directory."""

from __future__ import annotations

from collections.abc import Iterator

from atom_tier.preflight.context import CheckContext
from atom_tier.preflight.findings import Finding, Level, check
from atom_tier.settings import GIB as GB

# Past this share of available memory the DRAM tier crowds out the rest of the host (the
# API server, tokenizers, page cache the NVMe tier relies on).
DRAM_WARN_SHARE = 0.8


def _gb(value: float) -> str:
    return f"{value / GB:.1f} GB"


@check("dram-tier-memory", area="storage")
def check_dram_memory(ctx: CheckContext) -> Iterator[Finding]:
    size_gb = ctx.settings.dram_tier_gb
    if ctx.settings.connector.value == "off":
        return
    if size_gb is None:
        yield Finding(
            Level.OK,
            "dram-tier-memory",
            "DRAM tier sized automatically at start-up from host memory and /dev/shm "
            "(see connector-dram-tier)",
        )
        return
    if size_gb == 0:
        yield Finding(Level.INFO, "dram-tier-memory", "DRAM tier is off (ATOM_TIER_DRAM_GB=0)")
        return
    available = ctx.facts.host_memory_available
    if available is None:
        yield Finding(
            Level.WARNING,
            "dram-tier-memory",
            f"cannot read available host memory to check the {size_gb:g} GB DRAM tier",
        )
        return
    wanted = size_gb * GB
    if wanted > available:
        yield Finding(
            Level.ERROR,
            "dram-tier-memory",
            f"DRAM tier of {size_gb:g} GB exceeds the {_gb(available)} of host memory available",
            f"set ATOM_TIER_DRAM_GB to at most {int(available * DRAM_WARN_SHARE / GB)}",
        )
    elif wanted > DRAM_WARN_SHARE * available:
        yield Finding(
            Level.WARNING,
            "dram-tier-memory",
            f"DRAM tier of {size_gb:g} GB takes more than {DRAM_WARN_SHARE:.0%} of the "
            f"{_gb(available)} available",
            f"set ATOM_TIER_DRAM_GB to at most {int(available * DRAM_WARN_SHARE / GB)}",
        )
    else:
        yield Finding(
            Level.OK,
            "dram-tier-memory",
            f"DRAM tier of {size_gb:g} GB fits in the {_gb(available)} available",
        )


@check("nvme-aiofile", area="storage")
def check_nvme_aiofile(ctx: CheckContext) -> Iterator[Finding]:
    # With the lmcache engine its own `lmcache-aiofile` check covers this.
    if not ctx.settings.nvme_enabled or ctx.settings.connector.value == "lmcache":
        return
    if ctx.facts.aiofile_importable:
        yield Finding(Level.OK, "nvme-aiofile", "aiofile is importable for NVMe async I/O")
    else:
        yield Finding(
            Level.ERROR,
            "nvme-aiofile",
            "an NVMe tier is set (ATOM_TIER_NVME_PATH) but `aiofile` cannot be imported: the "
            "tier would be unusable",
            "pip install aiofile",
        )


@check("nvme-path", area="storage")
def check_nvme_path(ctx: CheckContext) -> Iterator[Finding]:
    settings, nvme = ctx.settings, ctx.facts.nvme
    if not settings.nvme_enabled or nvme is None:
        return
    path = nvme.path
    if not nvme.exists:
        yield Finding(
            Level.ERROR,
            "nvme-path",
            f"ATOM_TIER_NVME_PATH={path} does not exist",
            f"mkdir -p {path} (on the NVMe mount), or unset ATOM_TIER_NVME_PATH",
        )
        return
    if not nvme.is_dir:
        yield Finding(
            Level.ERROR,
            "nvme-path",
            f"ATOM_TIER_NVME_PATH={path} is not a directory",
            "point ATOM_TIER_NVME_PATH at a directory on the NVMe mount",
        )
        return
    if not nvme.writable:
        detail = f" ({nvme.error})" if nvme.error else ""
        yield Finding(
            Level.ERROR,
            "nvme-path",
            f"ATOM_TIER_NVME_PATH={path} is not writable by this user{detail}",
            f"chown/chmod {path} for the user running vLLM",
        )
        return
    yield Finding(Level.OK, "nvme-path", f"NVMe tier directory {path} is writable")
    if nvme.o_direct:
        yield Finding(Level.OK, "nvme-o-direct", f"O_DIRECT works on {path}: page cache bypassed")
    else:
        yield Finding(
            Level.INFO,
            "nvme-o-direct",
            f"O_DIRECT is not supported on {path}: the NVMe tier uses buffered I/O, which "
            "competes with the DRAM tier for host memory",
            "put ATOM_TIER_NVME_PATH on an ext4/xfs NVMe mount",
        )
    if settings.nvme_gb is not None and nvme.free_bytes is not None:
        wanted = settings.nvme_gb * GB
        # The tier's own chunks from an earlier run count as room: it reuses or evicts them.
        room = nvme.free_bytes + nvme.used_bytes
        if wanted > room:
            yield Finding(
                Level.ERROR,
                "nvme-capacity",
                f"ATOM_TIER_NVME_GB={settings.nvme_gb:g} needs more than the "
                f"{_gb(nvme.free_bytes)} free (+ {_gb(nvme.used_bytes)} already in the tier) "
                f"on {path}",
                f"free space on {path} or set ATOM_TIER_NVME_GB to at most {int(room / GB)}",
            )
        else:
            yield Finding(
                Level.OK,
                "nvme-capacity",
                f"NVMe cap of {settings.nvme_gb:g} GB fits in the {_gb(room)} free or already "
                "held by the tier",
            )
