"""Start-up work of the NVMe tier: rebuild the index from disk and size the tier.

The rebuild reads no payload and no header: one ``stat`` per chunk file gives its size (for
the cap) and mtime (the LRU order: the tier sets a chunk's mtime when it is written or read).
Its cost is therefore one directory entry + one stat per chunk, proportional to the number of
chunks the cap allows. Headers and checksums are verified lazily, on every read, so a chunk
that went bad while the server was down is a miss the first time it is asked for.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from atom_tier.log import get_logger
from atom_tier.sizing import auto_capacity, human_size
from atom_tier.tiers.chunk_format import (
    ALIGNMENT,
    CHUNK_SUFFIX,
    HEADER_BLOCK,
    TEMP_SUFFIX,
    is_chunk_name,
)

# The start line is the store's (operators filter on its logger name).
logger = get_logger("atom_tier.tiers.nvme_store")
# Reads mark chunks used by setting their mtime (the LRU order after a restart), batched.
USE_FLUSH_DELAY_S = 2.0


@dataclass
class ScanResult:
    """What the start-up scan found; ``chunks`` is (mtime_ns, digest, size), oldest first."""

    chunks: list[tuple[int, str, int]] = field(default_factory=list)
    total_bytes: int = 0
    temp_removed: int = 0
    truncated_removed: int = 0
    seconds: float = 0.0


def open_tier_dir(root: Path) -> int:
    """Create the tier's folders and take its lock (held by the returned fd until closed).

    One directory, one owner: two servers counting the same files against two caps would
    break both caps, so a second owner is refused (the kernel drops the lock of a killed one).
    """
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(
            f"another process uses {root} (its lock is held): give each server "
            "its own NVMe tier directory"
        ) from None
    for i in range(256):
        (root / f"{i:02x}").mkdir(exist_ok=True)
    return fd


def set_mtimes(paths: Iterable[str]) -> None:
    """Mark chunks used now: their mtime is their LRU position after a restart."""
    for path in paths:
        with contextlib.suppress(OSError):  # evicted or removed since: nothing to order
            os.utime(path)


class UseMarks:
    """Chunks read since the last flush; their mtimes are set USE_FLUSH_DELAY_S later, in
    one batch on a timer thread (a metadata write per read halved small-chunk reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self._timer: threading.Timer | None = None
        self._closed = False

    def add(self, paths: Iterable[str]) -> None:
        with self._lock:
            self._paths.update(paths)
            if self._timer is None and not self._closed:
                self._timer = threading.Timer(USE_FLUSH_DELAY_S, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._lock:
            self._timer = None
            paths, self._paths = self._paths, set()
        if paths:
            set_mtimes(paths)

    def close(self) -> None:
        """Flush now; later marks are kept until the next flush() (none is scheduled)."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
        self.flush()


def scan_chunk_dir(root: Path) -> ScanResult:
    """List the chunks under ``root``; delete temp files and impossible sizes.

    Temp files are leftovers of writes a killed process never published (the caller holds
    the directory's lock, so no live writer owns them). A chunk whose size is not a whole
    number of aligned blocks, or smaller than a header, was cut short: it can never verify.
    """
    start = time.monotonic()
    result = ScanResult()
    with contextlib.suppress(FileNotFoundError), os.scandir(root) as top:
        subdirs = [e.path for e in top if len(e.name) == 2 and e.is_dir(follow_symlinks=False)]
    for subdir in subdirs:
        with contextlib.suppress(FileNotFoundError), os.scandir(subdir) as entries:
            for entry in entries:
                name = entry.name
                if name.endswith(TEMP_SUFFIX):
                    remove_quietly([entry.path])
                    result.temp_removed += 1
                    continue
                if not (is_chunk_name(name) and name.startswith(os.path.basename(subdir))):
                    continue  # not ours: leave it alone
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_size < HEADER_BLOCK or st.st_size % ALIGNMENT:
                    remove_quietly([entry.path])
                    result.truncated_removed += 1
                    continue
                result.chunks.append((st.st_mtime_ns, name[: -len(CHUNK_SUFFIX)], st.st_size))
                result.total_bytes += st.st_size
    result.chunks.sort()
    result.seconds = time.monotonic() - start
    return result


def log_start(
    root: Path, engine: str, capacity: int, scan: ScanResult, kept: int, kept_bytes: int
) -> None:
    """One line on the tier's start: engine, cap, and what the rebuild found and removed."""
    summary = (
        f"{len(scan.chunks)} chunks found ({kept} kept, {human_size(kept_bytes)}), "
        f"{scan.temp_removed} temp and {scan.truncated_removed} truncated files removed"
    )
    # A zero cap rejects every store with no other trace: say so at warning level.
    level, note = logging.INFO, ""
    if capacity == 0:
        level, note = logging.WARNING, " (every chunk will be rejected: see `atom-tier doctor`)"
    logger.log(
        level,
        "NVMe tier at %s: %s I/O, cap %s%s; index rebuilt from disk in %.3f s: %s",
        *(root, engine, human_size(capacity), note, scan.seconds, summary),
    )


def auto_capacity_bytes(path: Path, tier_bytes_on_disk: int, share: float = 1.0) -> int:
    """The automatic cap for the filesystem holding ``path`` (see :func:`auto_capacity`)."""
    st = os.statvfs(path)
    free, size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    return auto_capacity(free, size, tier_bytes_on_disk, share)


def remove_quietly(paths: Iterable[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def unlink_each(paths: list[str]) -> list[OSError | None]:
    """Unlink each path; per path None or the error."""
    errors: list[OSError | None] = []
    for path in paths:
        try:
            os.unlink(path)
            errors.append(None)
        except OSError as exc:
            errors.append(exc)
    return errors
