"""Telling HIP-built, CUDA-built and missing LMCache native ops apart, without importing LMCache.

Against the real LMCache 0.5.6 wheel (the CUDA build), a HIP stand-in compiled here (no ROCm on
this machine), and installs whose extension is missing, built for another Python, or unreadable.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lmcache_helpers import (
    EXT_SUFFIX,
    LMCACHE_VERSION,
    build_extension,
    make_fake_build,
    make_lmcache_package,
    write_dist_info,
)

from atom_tier.lmcache.elf import ElfError, needed_libraries
from atom_tier.lmcache.native_ops import (
    OpsBuild,
    classify,
    cuda_only_distributions,
    find_package_dir,
    probe_native_ops,
)


def readelf_needed(path: Path) -> tuple[str, ...]:
    """binutils' view, as the oracle for the pure-Python reader (gcc brings binutils)."""
    readelf = shutil.which("readelf")
    assert readelf, "readelf (binutils) is expected next to gcc"
    out = subprocess.run([readelf, "-d", str(path)], capture_output=True, text=True, check=True)
    return tuple(
        line.split("[", 1)[1].rstrip("]") for line in out.stdout.splitlines() if "(NEEDED)" in line
    )


def test_real_wheel_is_the_cuda_build(lmcache_wheel_dir: Path) -> None:
    ops = probe_native_ops([lmcache_wheel_dir])
    assert ops.build is OpsBuild.CUDA
    assert ops.version == LMCACHE_VERSION
    assert ops.library is not None and ops.library.name == f"cuda_ops{EXT_SUFFIX}"
    assert ops.package_dir == lmcache_wheel_dir / "lmcache"
    assert any(lib.startswith("libcudart") for lib in ops.needed)
    assert "CUDA-built" in ops.describe() and LMCACHE_VERSION in ops.describe()


def test_probe_does_not_import_lmcache(lmcache_wheel_dir: Path) -> None:
    """Importing LMCache would start its device detection; the probe must only read files."""
    script = (
        "import sys; from atom_tier.lmcache.native_ops import probe_native_ops; "
        f"ops = probe_native_ops([{str(lmcache_wheel_dir)!r}]); "
        "print(ops.build.value, sorted(m for m in sys.modules if m.startswith('lmcache')))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["cuda", "[]"]


def test_reader_matches_readelf_on_every_wheel_library(lmcache_wheel_dir: Path) -> None:
    libraries = sorted((lmcache_wheel_dir / "lmcache").glob("*.so"))
    assert len(libraries) >= 2
    for library in libraries:
        assert needed_libraries(library) == readelf_needed(library), library.name


def test_hip_stand_in_is_the_hip_build(hip_build: Path) -> None:
    ops = probe_native_ops([hip_build])
    assert ops.build is OpsBuild.HIP
    assert ops.needed[:2] == ("libamdhip64.so", "libc10_hip.so")
    assert ops.needed == readelf_needed(hip_build / "lmcache" / f"cuda_ops{EXT_SUFFIX}")


def test_older_c_ops_name_is_found(tmp_path: Path) -> None:
    site = tmp_path / "site"
    make_fake_build(site, ["amdhip64"], module="c_ops")
    ops = probe_native_ops([site])
    assert ops.build is OpsBuild.HIP and ops.library is not None
    assert ops.library.name == f"c_ops{EXT_SUFFIX}"


def test_missing_extension_is_the_torch_fallback(tmp_path: Path) -> None:
    make_lmcache_package(tmp_path)
    ops = probe_native_ops([tmp_path])
    assert ops.build is OpsBuild.MISSING
    assert ops.version == LMCACHE_VERSION and ops.library is None
    assert "torch fallback" in ops.describe()


def test_extension_for_another_python_counts_as_missing(tmp_path: Path) -> None:
    package = make_lmcache_package(tmp_path)
    build_extension(package / "cuda_ops.cpython-39-x86_64-linux-gnu.so")
    ops = probe_native_ops([tmp_path])
    assert ops.build is OpsBuild.MISSING
    assert "cuda_ops.cpython-39-x86_64-linux-gnu.so cannot be imported" in ops.detail


def test_python_module_instead_of_extension_counts_as_missing(tmp_path: Path) -> None:
    package = make_lmcache_package(tmp_path)
    (package / "cuda_ops.py").write_text("")
    ops = probe_native_ops([tmp_path])
    assert ops.build is OpsBuild.MISSING and "Python source" in ops.detail


def test_extension_linking_neither_runtime_is_other(tmp_path: Path) -> None:
    package = make_lmcache_package(tmp_path)
    build_extension(package / f"cuda_ops{EXT_SUFFIX}")
    assert probe_native_ops([tmp_path]).build is OpsBuild.OTHER


def test_corrupt_extension_is_unreadable(tmp_path: Path) -> None:
    package = make_lmcache_package(tmp_path)
    (package / f"cuda_ops{EXT_SUFFIX}").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 20)
    ops = probe_native_ops([tmp_path])
    assert ops.build is OpsBuild.UNREADABLE and "truncated" in ops.detail


def test_not_installed(tmp_path: Path) -> None:
    assert probe_native_ops([tmp_path]).build is OpsBuild.NOT_INSTALLED
    assert find_package_dir([tmp_path]) is None


@pytest.mark.parametrize(
    ("needed", "build"),
    [
        (("libc10.so", "libamdhip64.so.6"), OpsBuild.HIP),
        (("libtorch_hip.so",), OpsBuild.HIP),
        (("libcudart.so.12", "libc10_cuda.so"), OpsBuild.CUDA),
        (("libtorch_cpu.so", "libc.so.6"), OpsBuild.OTHER),
        (("libamdhip64.so", "libcudart.so.13"), OpsBuild.OTHER),
    ],
)
def test_classify(needed: tuple[str, ...], build: OpsBuild) -> None:
    assert classify(needed) is build


def test_reader_rejects_non_elf_and_truncated_files(tmp_path: Path) -> None:
    text = tmp_path / "text.so"
    text.write_text("not a library")
    with pytest.raises(ElfError, match="not an ELF"):
        needed_libraries(text)
    real = build_extension(tmp_path / f"cut{EXT_SUFFIX}", ())
    cut = tmp_path / "cut.so"
    cut.write_bytes(real.read_bytes()[:80])
    with pytest.raises(ElfError, match="truncated"):
        needed_libraries(cut)
    with pytest.raises(ElfError, match="cannot read"):
        needed_libraries(tmp_path / "absent.so")


def test_reader_on_system_binaries_matches_readelf() -> None:
    for path in (Path(sys.executable).resolve(), Path("/bin/ls")):
        if path.exists():
            assert needed_libraries(path) == readelf_needed(path), path


def test_cuda_only_distributions_found_by_pip_name(tmp_path: Path) -> None:
    for name in (
        "cupy-cuda13x",
        "cuda_python",
        "cufile-python",
        "nixl-cu12",
        "cuda-bindings",
        "numpy",
        "cupy",
        "nixl",
    ):
        write_dist_info(tmp_path, name, "1.0")
    assert cuda_only_distributions([tmp_path]) == (
        "cuda-bindings",
        "cuda-python",
        "cufile-python",
        "cupy-cuda13x",
        "nixl-cu12",
    )


def test_real_wheel_target_has_no_cuda_only_distributions(lmcache_wheel_dir: Path) -> None:
    """--no-deps installs LMCache alone: the CUDA-only packages come only with its deps."""
    assert cuda_only_distributions([lmcache_wheel_dir]) == ()
