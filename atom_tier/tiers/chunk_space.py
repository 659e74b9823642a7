"""Room on disk for the NVMe tier's chunk files: deleting the files of chunks taken out of
the index, and letting a writer wait until its chunk fits next to everything on disk.

The index (``index.ChunkIndex``) decides which chunks go and which may be written; this
module does the deletions it asked for on the calling I/O thread and wakes the writers
waiting on them. Bytes of a file whose deletion failed stay counted against the cap.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from atom_tier.tiers.chunk_format import chunk_relpath
from atom_tier.tiers.index import ChunkIndex, Victim
from atom_tier.tiers.rebuild import unlink_each
from atom_tier.tiers.tier_stats import TierCounters, fault_kind


class ChunkSpace:
    """Chunk file paths, deletions and claims of one tier directory."""

    def __init__(self, root: Path, index: ChunkIndex, counters: TierCounters) -> None:
        self.root = root
        self._root_str = str(root)
        self._index = index
        self._counters = counters
        self._freed = threading.Condition()  # notified whenever chunk files were deleted

    def path(self, digest: str) -> str:
        # String joins, not pathlib: this runs for every chunk on the I/O hot path.
        return f"{self._root_str}/{chunk_relpath(digest)}"

    def unlink(self, victims: list[Victim], evicted: bool = True) -> None:
        """Delete the files of chunks taken out of the index (on the calling thread)."""
        if not victims:
            return
        if evicted:
            self._counters.add_many(
                {"evictions": len(victims), "evicted_bytes": sum(v.size for v in victims)}
            )
        errors = unlink_each([self.path(v.digest) for v in victims])
        for victim, error in zip(victims, errors, strict=True):
            if error is None or isinstance(error, FileNotFoundError):
                self._index.deleted(victim)
            else:  # the file may still be there: its bytes stay counted against the cap
                self._index.delete_failed(victim)
                self._counters.fault("delete", error, fault_kind(error, self.root_exists()))
        with self._freed:
            self._freed.notify_all()

    def root_exists(self) -> bool:
        """Whether the tier's directory is still there. A stat that fails otherwise (EIO,
        ESTALE on NFS) counts as there: the fault is then classified by its own errno."""
        try:
            return self.root.is_dir()
        except OSError:
            return True

    def claim(self, digest: str, deadline: float) -> bool:
        """Wait (until ``deadline``) for the chunk to fit on disk next to everything there."""
        with self._freed:
            while not self._index.claim(digest):
                left = deadline - time.monotonic()
                if self._index.pending_deletes == 0 or left <= 0:
                    return False  # only undeletable files (or a stuck deletion) stand in the way
                self._freed.wait(left)
        return True
