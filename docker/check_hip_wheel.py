"""Fail the image build unless the LMCache wheel just built has HIP native ops.

    python3 check_hip_wheel.py /wheels/lmcache-*.whl

Opens the wheel (a zip), reads the DT_NEEDED entries of LMCache's native extension
(``lmcache/cuda_ops*.so``; ``c_ops`` in older releases) with atom-tier's ELF reader, and exits 1
unless it links a HIP runtime library and no CUDA one: a build that silently fell back to CUDA
(or produced no extension) stops the image here, not at serving time. Runs in the builder
stage, where atom-tier is not installed: the reader (``atom_tier/lmcache/elf.py``, standard
library only) is copied next to this script; in the repository it is found at its own place.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
ELF_READER_PLACES = (HERE / "elf.py", HERE.parent / "atom_tier" / "lmcache" / "elf.py")
# The same library names atom_tier.lmcache.native_ops judges an installed extension by.
HIP_LIBRARIES = ("libamdhip64", "libc10_hip", "libtorch_hip", "libhiprtc")
CUDA_LIBRARIES = ("libcudart", "libc10_cuda", "libtorch_cuda", "libcuda.so")
NATIVE_MODULES = ("cuda_ops", "c_ops")


def _elf_reader() -> ModuleType:
    for path in ELF_READER_PLACES:
        if path.is_file():
            spec = importlib.util.spec_from_file_location("atom_tier_elf", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules["atom_tier_elf"] = module  # its dataclasses look the module up
            spec.loader.exec_module(module)
            return module
    raise FileNotFoundError(f"atom-tier's elf.py is not at {[str(p) for p in ELF_READER_PLACES]}")


def native_extensions(names: Sequence[str]) -> list[str]:
    """Wheel members that are LMCache's native ops extension."""
    found = []
    for name in names:
        parts = name.split("/")
        if len(parts) == 2 and parts[0] == "lmcache" and parts[1].endswith(".so"):
            if parts[1].split(".", 1)[0] in NATIVE_MODULES:
                found.append(name)
    return found


def check_wheel(wheel: Path, needed_libraries: Callable[[Path], Sequence[str]]) -> str | None:
    """None when the wheel's native ops are HIP-built, else what is wrong."""
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as tmp:
        members = native_extensions(archive.namelist())
        if not members:
            return f"{wheel.name} has no lmcache/cuda_ops or c_ops extension: BUILD_WITH_HIP failed"
        for member in members:
            needed = list(needed_libraries(Path(archive.extract(member, tmp))))
            cuda = [lib for lib in needed if lib.startswith(CUDA_LIBRARIES)]
            if cuda:
                return f"{member} links CUDA libraries {cuda}: not a HIP build"
            if not any(lib.startswith(HIP_LIBRARIES) for lib in needed):
                return f"{member} links no HIP library (needs {needed}): not a HIP build"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    wheels = [Path(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    if len(wheels) != 1:
        print("check_hip_wheel: give exactly one LMCache wheel", file=sys.stderr)
        return 2
    problem = check_wheel(wheels[0], _elf_reader().needed_libraries)
    if problem is not None:
        print(f"check_hip_wheel: {problem}", file=sys.stderr)
        return 1
    print(f"check_hip_wheel: {wheels[0].name}: native ops link HIP")
    return 0


if __name__ == "__main__":
    sys.exit(main())
