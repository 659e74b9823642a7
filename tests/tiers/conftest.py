"""Helpers for NVMe tier tests: stores on real files in tmp dirs, deterministic payloads."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from atom_tier.tiers.direct_engine import probe_o_direct
from tests.conftest import StoreFactory

__all__ = ["StoreFactory"]


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


def fs_used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize
