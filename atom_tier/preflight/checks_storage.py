"""Checks of the cache tiers' resources: host memory for DRAM, the NVMe directory and its
automatic cap, stale segments in /dev/shm."""

from __future__ import annotations

import math
from collections.abc import Iterator

from atom_tier.preflight.context import CheckContext, NvmeFacts, ShmFacts
from atom_tier.preflight.findings import Finding, Level, check
from atom_tier.sizing import (
    GIB,
    auto_capacity,
    auto_reserve,
    gb_setting,
    human_size,
    kv_bytes_per_token,
)

# Past this share of available memory the DRAM tier crowds out the rest of the host (the
# API server, tokenizers, page cache the NVMe tier relies on).
DRAM_WARN_SHARE = 0.8


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
            f"cannot read available host memory to check the {size_gb:g} GiB DRAM tier",
        )
        return
    wanted = size_gb * GIB
    if wanted > available:
        yield Finding(
            Level.ERROR,
            "dram-tier-memory",
            f"DRAM tier of {size_gb:g} GiB exceeds the {human_size(available)} of host memory "
            "available",
            f"set ATOM_TIER_DRAM_GB to at most {gb_setting(available * DRAM_WARN_SHARE)}",
        )
    elif wanted > DRAM_WARN_SHARE * available:
        yield Finding(
            Level.WARNING,
            "dram-tier-memory",
            f"DRAM tier of {size_gb:g} GiB takes more than {DRAM_WARN_SHARE:.0%} of the "
            f"{human_size(available)} available",
            f"set ATOM_TIER_DRAM_GB to at most {gb_setting(available * DRAM_WARN_SHARE)}",
        )
    else:
        yield Finding(
            Level.OK,
            "dram-tier-memory",
            f"DRAM tier of {size_gb:g} GiB fits in the {human_size(available)} available",
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
    if settings.nvme_gb is None:
        yield from _automatic_cap_findings(ctx, nvme)
    elif nvme.free_bytes is not None:
        wanted = settings.nvme_gb * GIB
        # The tier's own chunks from an earlier run count as room: it reuses or evicts them.
        room = nvme.free_bytes + nvme.used_bytes
        if wanted > room:
            lower = f" or set ATOM_TIER_NVME_GB to at most {gb_setting(room)}"
            yield Finding(
                Level.ERROR,
                "nvme-capacity",
                f"ATOM_TIER_NVME_GB={settings.nvme_gb:g} ({human_size(wanted)}) needs more than "
                f"the {human_size(nvme.free_bytes)} free (+ {human_size(nvme.used_bytes)} already "
                f"in the tier) on {path}",
                f"free space on {path}" + (lower if room > 0 else ""),
            )
        else:
            yield Finding(
                Level.OK,
                "nvme-capacity",
                f"NVMe cap of {settings.nvme_gb:g} GiB fits in the {human_size(room)} free or "
                "already held by the tier",
            )


def _prefix(ctx: CheckContext) -> tuple[int, str] | None:
    """Bytes of one full-length prefix (max-model-len in whole chunks, as the DRAM guard counts
    it) and how they add up; None before vLLM's config is known (``doctor``)."""
    # Imported here: importing checks_connector registers its checks, which keep their order.
    from atom_tier.preflight.checks_connector import uses_atom_tier_connector

    config = ctx.vllm_config
    if config is None or not uses_atom_tier_connector(config):
        return None
    chunk = ctx.settings.chunk_tokens
    tokens = math.ceil(config.model_config.max_model_len / chunk) * chunk
    per_token = kv_bytes_per_token(config)
    return tokens * per_token, (
        f"one full-length prefix ({tokens} tokens, max-model-len in whole chunks, x "
        f"{per_token} KV bytes per token = {human_size(tokens * per_token)})"
    )


def _replica_share(config: object) -> float:
    # vllm_tier gives each data-parallel replica its own store with this share of the cap.
    size = getattr(getattr(config, "parallel_config", None), "data_parallel_size", 1)
    return 1 / size if isinstance(size, int) and size > 1 else 1.0


def _automatic_cap_findings(ctx: CheckContext, nvme: NvmeFacts) -> Iterator[Finding]:
    """The cap the store will give itself with ATOM_TIER_NVME_GB unset (its own arithmetic,
    ``rebuild.auto_capacity``). Zero rejects every chunk. Below one full-length prefix the tier
    cannot keep the longest prompt the server accepts and evicts on nearly every write; that
    needs vLLM's config, so ``doctor`` can only flag zero. Counted as the tier's own: every
    file under the directory (other models' too), so the cap shown is at most one too high,
    never too low after a restart that found the disk filled by the tier itself."""
    if ctx.settings.connector.value != "native" or None in (nvme.free_bytes, nvme.fs_bytes):
        return
    free, fs_bytes = nvme.free_bytes or 0, nvme.fs_bytes or 0
    share = _replica_share(ctx.vllm_config)
    cap = auto_capacity(free, fs_bytes, nvme.used_bytes, share)
    reserve, room = auto_reserve(fs_bytes), free + nvme.used_bytes
    arithmetic = (
        f"{human_size(free)} free + {human_size(nvme.used_bytes)} already in the tier - "
        f"{human_size(reserve)} kept free for others (max(10 % of the {human_size(fs_bytes)} "
        "filesystem, 4 GiB))" + (f", x {share:g} per data-parallel replica" if share < 1 else "")
    )
    prefix = _prefix(ctx)
    if cap > 0 and (prefix is None or cap >= prefix[0]):
        holds = f"; it holds {prefix[1]}" if prefix else ""
        yield Finding(
            Level.OK,
            "nvme-auto-capacity",
            f"NVMe cap sized automatically: {human_size(cap)} = {arithmetic}{holds}",
        )
        return
    if cap == 0:
        problem = "the tier will reject every chunk"
    else:
        assert prefix is not None
        problem = (
            f"less than {prefix[1]}: the tier cannot keep the longest prompts and evicts on "
            "nearly every write"
        )
    target = prefix[0] if prefix else 1
    need = reserve + math.ceil(target / share) - room
    fixes = ["point ATOM_TIER_NVME_PATH at a larger filesystem"]
    if reserve + math.ceil(target / share) <= fs_bytes:
        fixes.insert(
            0,
            f"free {'' if prefix else 'more than '}{human_size(need)} on {nvme.path} (the "
            "automatic cap grows with the free space)",
        )
    else:
        problem += "; freeing space cannot help: the filesystem is smaller than the reserve" + (
            " plus one prefix" if prefix else ""
        )
    if room > 0 and room * share >= target:
        fixes.append(
            f"set ATOM_TIER_NVME_GB to at most {gb_setting(room)}, which gives the tier "
            "the space automatic sizing keeps free for others"
        )
    yield Finding(
        Level.WARNING,
        "nvme-auto-capacity",
        f"ATOM_TIER_NVME_GB is unset and the automatic NVMe cap on {nvme.path} is "
        f"{human_size(cap)} ({arithmetic}): {problem}",
        "; or ".join(fixes),
    )


def _count(number: int, noun: str, plural: str = "s") -> str:
    return f"{number} {noun}" + ("" if number == 1 else plural)


@check("shm-stale-segments", area="storage")
def check_stale_shm(ctx: CheckContext) -> Iterator[Finding]:
    """Segments a killed process left in /dev/shm hold host memory until removed. Reported at
    info level: they are not this server's configuration and stop nothing; the DRAM tier's
    own room in /dev/shm is checked by ``dram-tier-exceeds-shm``. Nothing is deleted here."""
    shm: ShmFacts | None = ctx.facts.shm
    if shm is None:
        return
    if not shm.stale:
        yield Finding(
            Level.OK,
            "shm-stale-segments",
            f"no stale psm_* segments in {shm.root} ({shm.in_use} in use by live processes)",
        )
        return
    caveat = (
        f"; {_count(shm.uninspected, 'process', 'es')} could not be inspected (reading its maps "
        "or open files was denied; run doctor as root): a segment only it uses is listed too"
        if shm.uninspected
        else ""
    )
    yield Finding(
        Level.INFO,
        "shm-stale-segments",
        f"{_count(len(shm.stale), 'psm_* shared-memory segment')} in {shm.root} that no live "
        f"process maps or holds open: {human_size(sum(s.allocated for s in shm.stale))} of "
        f"memory held ({human_size(sum(s.size for s in shm.stale))} in size), left by "
        "processes killed before their clean-up (vLLM's shared-memory queues, after a "
        f"SIGKILL){caveat}",
        "rm -f " + " ".join(str(shm.root / s.name) for s in shm.stale) + " (only segments no "
        "live process mapped or held open when doctor ran are named; run it again right "
        "before removing them, and do not remove segments while a server starts)",
    )
