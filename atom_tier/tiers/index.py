"""In-memory index of the NVMe tier: which chunks exist, their LRU order and the byte budget.

Two budgets, both capped:

* logical (``live_bytes``): published chunks + reservations. ``reserve`` evicts LRU chunks
  until a new chunk fits; it runs on the scheduler thread and never waits.
* on disk (``used_bytes``): published chunks + chunks being written + evicted chunks whose
  file is not deleted yet. A writer must ``claim`` its bytes before writing its first byte,
  and a claim only succeeds while everything on disk plus the new chunk fits the cap. Because
  the logical budget already fits, a claim can only be held up by deletions in flight, and
  those never wait for claims. So the cap holds on disk at every instant, not just on paper.

Thread-safe: the scheduler thread reserves and looks up, the I/O threads claim and delete.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class _Entry:
    size: int
    published: bool = False
    claimed: bool = False
    pins: int = 0


@dataclass(frozen=True)
class Victim:
    """A chunk taken out of the index whose file must be deleted, then reported with
    ``ChunkIndex.deleted`` (or ``delete_failed``)."""

    digest: str
    size: int


class ChunkIndex:
    """LRU index with a hard byte cap (least recently used first in iteration order)."""

    def __init__(self, capacity_bytes: int) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._capacity = max(0, capacity_bytes)
        self._live_bytes = 0
        self._disk_bytes = 0
        self._pending_deletes = 0
        # Digests whose old file is still to be unlinked: a new chunk under the same name
        # must not be renamed into place before that unlink, or the unlink removes it.
        self._deleting: Counter[str] = Counter()

    # -- queries -------------------------------------------------------------------------
    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def used_bytes(self) -> int:
        """Bytes that may be on disk now (chunks, writes in progress, pending deletions)."""
        with self._lock:
            return self._disk_bytes

    @property
    def live_bytes(self) -> int:
        with self._lock:
            return self._live_bytes

    @property
    def pending_deletes(self) -> int:
        with self._lock:
            return self._pending_deletes

    def published_stats(self) -> tuple[int, int]:
        """(number of published chunks, their bytes)."""
        with self._lock:
            sizes = [e.size for e in self._entries.values() if e.published]
            return len(sizes), sum(sizes)

    def is_published(self, digest: str) -> bool:
        with self._lock:
            entry = self._entries.get(digest)
            return entry is not None and entry.published

    def knows(self, digest: str) -> bool:
        """Published or being written."""
        with self._lock:
            return digest in self._entries

    def lru_order(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    # -- writes --------------------------------------------------------------------------
    def reserve(self, digest: str, size: int) -> list[Victim] | None:
        """Reserve ``size`` bytes for a new chunk, evicting LRU chunks as needed.

        Returns the evicted chunks (possibly none), or None when the chunk is already known or
        cannot fit (larger than the cap, or everything evictable is pinned by reads).
        """
        with self._lock:
            if digest in self._entries or size > self._capacity:
                return None
            needed = self._live_bytes + size - self._capacity
            victims: list[str] = []
            if needed > 0:
                freed = 0
                for candidate, entry in self._entries.items():
                    if entry.published and entry.pins == 0:
                        victims.append(candidate)
                        freed += entry.size
                        if freed >= needed:
                            break
                if freed < needed:
                    return None
            evicted = [self._take_locked(d) for d in victims]
            self._entries[digest] = _Entry(size)
            self._live_bytes += size
            return evicted

    def claim(self, digest: str) -> bool:
        """Count a reserved chunk as on disk before writing it; False while it does not fit
        yet, or while an older file of the same name still waits for its unlink."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None or entry.published:
                return False
            if entry.claimed:
                return True
            if digest in self._deleting or self._disk_bytes + entry.size > self._capacity:
                return False
            entry.claimed = True
            self._disk_bytes += entry.size
            return True

    def publish(self, digest: str) -> None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None and entry.claimed:
                entry.published = True
                self._entries.move_to_end(digest)

    def abort(self, digest: str) -> None:
        """Drop a reservation whose write did not happen or failed (no temp file left)."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None and not entry.published:
                del self._entries[digest]
                self._live_bytes -= entry.size
                if entry.claimed:
                    self._disk_bytes -= entry.size

    def add_existing(self, digest: str, size: int) -> None:
        """Register a chunk found on disk at start-up (callers add oldest first)."""
        with self._lock:
            if digest in self._entries:
                return
            self._entries[digest] = _Entry(size, published=True, claimed=True)
            self._live_bytes += size
            self._disk_bytes += size

    def remove(self, digest: str) -> Victim | None:
        """Take a published chunk out (corrupt or vanished); its file must then be deleted."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None or not entry.published:
                return None
            return self._take_locked(digest)

    def deleted(self, victim: Victim) -> None:
        """The file of an evicted/removed chunk is gone from disk."""
        with self._lock:
            self._disk_bytes -= victim.size
            self._done_deleting(victim)

    def delete_failed(self, victim: Victim) -> None:
        """The file could not be deleted: its bytes stay counted as on disk."""
        with self._lock:
            self._done_deleting(victim)

    def _done_deleting(self, victim: Victim) -> None:
        self._pending_deletes -= 1
        self._deleting[victim.digest] -= 1
        if self._deleting[victim.digest] <= 0:
            del self._deleting[victim.digest]

    def set_capacity(self, capacity_bytes: int) -> list[Victim]:
        """Change the cap (start-up sizing) and evict LRU chunks until the tier fits."""
        with self._lock:
            self._capacity = max(0, capacity_bytes)
            evicted = []
            for digest in list(self._entries):
                if self._live_bytes <= self._capacity:
                    break
                entry = self._entries[digest]
                if entry.published and entry.pins == 0:
                    evicted.append(self._take_locked(digest))
            return evicted

    # -- reads ---------------------------------------------------------------------------
    def touch(self, digests: Iterable[str]) -> None:
        with self._lock:
            for digest in digests:
                if digest in self._entries:
                    self._entries.move_to_end(digest)

    def pin(self, digest: str) -> bool:
        """Protect a published chunk from eviction while it is read; False if absent."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None or not entry.published:
                return False
            entry.pins += 1
            self._entries.move_to_end(digest)
            return True

    def unpin(self, digest: str) -> None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None and entry.pins > 0:
                entry.pins -= 1

    def _take_locked(self, digest: str) -> Victim:
        entry = self._entries.pop(digest)
        self._live_bytes -= entry.size
        self._pending_deletes += 1
        self._deleting[digest] += 1
        return Victim(digest, entry.size)
