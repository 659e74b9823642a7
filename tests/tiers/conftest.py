"""Helpers for NVMe tier tests: stores on real files in tmp dirs, deterministic payloads."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atom_tier.tiers.aio import probe_o_direct
from atom_tier.tiers.nvme_store import NvmeChunkStore

StoreFactory = Callable[..., NvmeChunkStore]


def payload_for(key: bytes, size: int) -> bytes:
    """Bytes that identify their key: any mix-up between chunks shows as a mismatch."""
    seed = hashlib.sha256(key).digest()
    return (seed * (size // len(seed) + 1))[:size]


def disk_usage(root: Path) -> int:
    """Bytes of every file under the tier's directory (chunks, temp files), as on disk now."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name == ".lock":
                continue
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(folder, name)).st_size
    return total


def chunk_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("??/*") if p.is_file())


def engines() -> list[Any]:
    """Both engines; "direct" only where O_DIRECT works in the temp dir's filesystem."""
    import tempfile

    with tempfile.TemporaryDirectory() as probe_dir:
        direct_ok = probe_o_direct(probe_dir)
    return [
        pytest.param(
            "direct",
            marks=pytest.mark.skipif(not direct_ok, reason="no O_DIRECT in the temp dir"),
        ),
        "aiofile",
    ]


@pytest.fixture
def make_store() -> Iterator[StoreFactory]:
    """Opens stores (waiting for start-up) and closes all of them at the end of the test."""
    opened: list[NvmeChunkStore] = []

    def factory(root: Path, capacity: int | None, **options: Any) -> NvmeChunkStore:
        options.setdefault("namespace", b"test-model")
        store = NvmeChunkStore(root, capacity, **options)
        store.wait_ready(30)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts real tmpfs filesystems of a given size (a disk we can really fill, and whose
    used-bytes count statvfs reads atomically); skipped where mounting is denied."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mount_point = tmp_path / f"tmpfs{len(mounted)}"
        mount_point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(mount_point)
        return mount_point

    yield mount
    for mount_point in mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fs_used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize
