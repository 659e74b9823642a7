"""Which build of LMCache's native ops is installed: HIP, CUDA, or none (torch fallback).

LMCache binds its compiled ``lmcache.cuda_ops`` (``lmcache.c_ops`` in older releases) when
it can import it and otherwise runs a torch fallback silently (seen 1.7x slower than no cache
at all). The PyPI wheel's extension links ``libcudart``/``libc10_cuda``: on a ROCm machine it
cannot load, so the wheel *is* the fallback there. A HIP build (``BUILD_WITH_HIP=1``, from
source) links ``libamdhip64``/``libc10_hip`` instead.

This probe tells them apart without importing LMCache or its extension (importing ``lmcache``
pulls torch and starts LMCache's device detection; loading a CUDA-built ``.so`` on ROCm
fails, and loading any library runs its initialisers): it finds the extension file the way
Python's import system would (``PathFinder`` on the package directory) and reads the ELF
dynamic section (:mod:`atom_tier.lmcache.elf`). ``search_path`` lets tests point it at a
wheel unpacked with ``pip install --no-deps --target``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata as metadata
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from atom_tier.lmcache.elf import ElfError, needed_libraries

PACKAGE = "lmcache"
# Newest name first: LMCache 0.5.x imports cuda_ops; older releases (and ATOM's HIP recipe
# for them) built c_ops.
NATIVE_MODULES = ("cuda_ops", "c_ops")
HIP_LIBRARIES = ("libamdhip64", "libc10_hip", "libtorch_hip", "libhiprtc")
CUDA_LIBRARIES = ("libcudart", "libc10_cuda", "libtorch_cuda", "libcuda.so")

# CUDA-only distributions the LMCache wheel pulls in (cupy-cuda13x, cuda-python and its
# cuda-bindings, cufile-python; nixl-cu12/cu13 with the nixl extra). On ROCm they are dead
# weight at best; cupy-cuda* and nixl-cu* fail or mislead when imported.
CUDA_ONLY_DISTRIBUTIONS = (
    re.compile(r"^cupy-cuda[0-9a-z]*$"),
    re.compile(r"^nixl[a-z0-9-]*-cu[0-9]+[a-z0-9]*$"),
    re.compile(r"^cufile-python$"),
    re.compile(r"^cuda-python$"),
    re.compile(r"^cuda-bindings$"),
)


class OpsBuild(str, Enum):
    """What LMCache's native ops extension was built for."""

    HIP = "hip"
    CUDA = "cuda"
    OTHER = "other"  # an ELF linking neither runtime (e.g. a CPU-only build)
    MISSING = "missing"  # LMCache installed, extension absent: torch fallback
    UNREADABLE = "unreadable"  # extension present but not an ELF this probe can read
    NOT_INSTALLED = "not-installed"


@dataclass(frozen=True)
class NativeOps:
    """The result of :func:`probe_native_ops`."""

    build: OpsBuild
    version: str | None = None
    package_dir: Path | None = None
    library: Path | None = None
    needed: tuple[str, ...] = ()
    detail: str = ""

    def describe(self) -> str:
        where = f" ({self.library.name})" if self.library else ""
        version = f"LMCache {self.version}" if self.version else "LMCache"
        texts = {
            OpsBuild.HIP: f"{version} native ops are HIP-built{where}",
            OpsBuild.CUDA: f"{version} native ops are CUDA-built{where}",
            OpsBuild.OTHER: f"{version} native ops link neither HIP nor CUDA{where}",
            OpsBuild.MISSING: f"{version} has no native ops extension: it runs its torch fallback",
            OpsBuild.UNREADABLE: f"{version} native ops could not be read{where}",
            OpsBuild.NOT_INSTALLED: "LMCache is not installed",
        }
        text = texts[self.build]
        return f"{text}; {self.detail}" if self.detail else text


def normalize(name: str) -> str:
    """Distribution names compared as pip does (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def classify(needed: Sequence[str]) -> OpsBuild:
    hip = any(lib.startswith(HIP_LIBRARIES) for lib in needed)
    cuda = any(lib.startswith(CUDA_LIBRARIES) for lib in needed)
    if hip and not cuda:
        return OpsBuild.HIP
    if cuda and not hip:
        return OpsBuild.CUDA
    return OpsBuild.OTHER


def _paths(search_path: Sequence[str | Path] | None) -> list[str] | None:
    return None if search_path is None else [str(p) for p in search_path]


def _distributions(search_path: Sequence[str | Path] | None) -> list[metadata.Distribution]:
    paths = _paths(search_path)
    return list(metadata.distributions(path=sys.path if paths is None else paths))


def lmcache_version(search_path: Sequence[str | Path] | None = None) -> str | None:
    for dist in _distributions(search_path):
        if normalize(dist.metadata["Name"] or "") == PACKAGE:
            return dist.version
    return None


def find_package_dir(search_path: Sequence[str | Path] | None = None) -> Path | None:
    """The directory ``import lmcache`` would load, found without importing it."""
    spec = importlib.machinery.PathFinder.find_spec(PACKAGE, _paths(search_path))
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _stray_builds(package_dir: Path) -> str:
    """Extension files Python would not import here (another Python version or platform)."""
    strays = sorted(
        p.name for name in NATIVE_MODULES for p in package_dir.glob(f"{name}*.so") if p.is_file()
    )
    if not strays:
        return ""
    return (
        f"{', '.join(strays)} cannot be imported by this Python "
        f"({sys.implementation.cache_tag}: expects one of "
        f"{', '.join(importlib.machinery.EXTENSION_SUFFIXES)})"
    )


def probe_native_ops(search_path: Sequence[str | Path] | None = None) -> NativeOps:
    """Find LMCache's native ops on ``search_path`` (default ``sys.path``) and classify them."""
    package_dir = find_package_dir(search_path)
    if package_dir is None:
        return NativeOps(OpsBuild.NOT_INSTALLED)
    version = lmcache_version(search_path)
    for name in NATIVE_MODULES:
        spec = importlib.machinery.PathFinder.find_spec(f"{PACKAGE}.{name}", [str(package_dir)])
        if spec is None or spec.origin is None:
            continue
        library = Path(spec.origin)
        if not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            detail = f"{library.name} is Python source, not a compiled extension"
            return NativeOps(OpsBuild.MISSING, version, package_dir, library, detail=detail)
        try:
            needed = needed_libraries(library)
        except ElfError as exc:
            return NativeOps(OpsBuild.UNREADABLE, version, package_dir, library, detail=str(exc))
        return NativeOps(classify(needed), version, package_dir, library, needed)
    return NativeOps(OpsBuild.MISSING, version, package_dir, detail=_stray_builds(package_dir))


def cuda_only_distributions(search_path: Sequence[str | Path] | None = None) -> tuple[str, ...]:
    """Installed CUDA-only distributions (as pip names them), for the uninstall command."""
    found = set()
    for dist in _distributions(search_path):
        name = normalize(dist.metadata["Name"] or "")
        if any(pattern.match(name) for pattern in CUDA_ONLY_DISTRIBUTIONS):
            found.add(name)
    return tuple(sorted(found))


@dataclass(frozen=True)
class LMCacheFacts:
    """What the LMCache guards probe. ``hash_randomization``: this interpreter salts str
    hashes (``sys.flags.hash_randomization``), i.e. it did not start with PYTHONHASHSEED=0."""

    native_ops: NativeOps
    cuda_only: tuple[str, ...]
    hash_randomization: bool


def probe_lmcache_facts(search_path: list[str] | None = None) -> LMCacheFacts:
    return LMCacheFacts(
        native_ops=probe_native_ops(search_path),
        cuda_only=cuda_only_distributions(search_path),
        hash_randomization=bool(sys.flags.hash_randomization),
    )
