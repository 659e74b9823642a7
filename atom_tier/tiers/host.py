"""What the host offers the tiers: memory (or the cgroup's limit), /dev/shm, GPUs.

Probes, read where a tier is sized: the connector and the LMCache engine's configuration in a
starting server, preflight and ``doctor`` (through ``atom_tier.preflight.probes``). The
arithmetic over what they return is :mod:`atom_tier.sizing`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

from atom_tier.sizing import DramBudget


def probe_host_memory(meminfo: Path = Path("/proc/meminfo")) -> tuple[int | None, int | None]:
    """(total, available) host memory in bytes from /proc/meminfo; None where unknown."""
    try:
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines())
    except (OSError, ValueError):
        return None, None

    def kib(name: str) -> int | None:
        raw = fields.get(name)
        return int(raw.split()[0]) * 1024 if raw else None

    return kib("MemTotal"), kib("MemAvailable")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def probe_dram_budget(
    meminfo: Path = Path("/proc/meminfo"),
    cgroup_max: Path = Path("/sys/fs/cgroup/memory.max"),
    shm: Path = Path("/dev/shm"),
) -> DramBudget:
    """What the automatic DRAM tier is sized from: the host's (or the cgroup's) memory limit
    and /dev/shm, where vLLM maps the tier."""
    total, _available = probe_host_memory(meminfo)
    limits = [v for v in (total, _read_int(cgroup_max)) if v is not None]
    try:
        stat = os.statvfs(shm)
        shm_size: int | None = stat.f_blocks * stat.f_frsize
        shm_free: int | None = stat.f_bavail * stat.f_frsize
    except OSError:
        shm_size = shm_free = None
    return DramBudget(min(limits) if limits else None, shm_size, shm_free)


def probe_devices_on_node() -> int | None:
    """GPUs vLLM's platform sees on this node; None where it has none to count (CPU).

    Imports vLLM: call it only inside a vLLM process (the connector, a starting server)."""
    from vllm.platforms import current_platform

    if not (current_platform.is_cuda_alike() or current_platform.is_xpu()):
        return None
    try:
        return int(current_platform.device_count())
    except Exception:  # no device query: size as if the server owned the node
        return None
