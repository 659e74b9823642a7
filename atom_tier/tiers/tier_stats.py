"""Counters of the NVMe tier and its fault state (writes stop on a fault, logged once).

Everything is a plain number so the connector can export a :meth:`TierCounters.snapshot`
as it likes; ``vllm_tier`` turns the same snapshot into vLLM offloading metrics.
"""

from __future__ import annotations

import errno
import threading
import time
from collections import Counter
from dataclasses import dataclass

from atom_tier.log import get_logger
from atom_tier.tiers.chunk_format import CorruptionKind

logger = get_logger(__name__)

COUNTER_NAMES = (
    "lookups",
    "hits",
    "misses",
    "reads",
    "read_bytes",
    "read_seconds",
    "read_failures",
    "writes",
    "write_bytes",
    "write_seconds",
    "stores_present",
    "stores_rejected",
    "stores_skipped_disabled",
    "stores_skipped_not_ready",
    "write_failures",
    "evictions",
    "evicted_bytes",
    "corrupt_dropped",
    *(f"corrupt_{kind.value}" for kind in CorruptionKind),
    "vanished",
    "faults",
    "fault_enospc",
    "fault_eio",
    "fault_path_removed",
    "fault_other",
    "temp_files_removed",
)
GAUGE_NAMES = (
    "ready",
    "write_disabled",
    "usage_bytes",
    "capacity_bytes",
    "chunks",
    "chunk_bytes",
    "o_direct",
    "rebuild_seconds",
    "rebuild_chunks",
)


def fault_kind(exc: OSError, root_exists: bool) -> str:
    if not root_exists or exc.errno == errno.ENOENT:
        return "path_removed"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "enospc"
    if exc.errno == errno.EIO:
        return "eio"
    return "other"


class Counters:
    """Thread-safe named counters; :meth:`snapshot` reports every name, zeros included."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, value: float = 1) -> None:
        with self._lock:
            self._counts[name] += value  # type: ignore[assignment]

    def add_many(self, values: dict[str, float]) -> None:
        with self._lock:
            for name, value in values.items():
                self._counts[name] += value  # type: ignore[assignment]

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {name: float(self._counts[name]) for name in self._names}


class TierCounters(Counters):
    """The NVMe tier's counters plus the write-fault state machine.

    A fault (disk full, EIO, directory removed, ...) disables writes. After ``retry_s`` one
    write is allowed again; if it fails the wait doubles (up to ``max_retry_s``). Only the
    first fault of a streak is logged at WARNING, its recovery at INFO.
    """

    def __init__(self, where: str, retry_s: float = 60.0, max_retry_s: float = 900.0) -> None:
        super().__init__(COUNTER_NAMES)
        self._where = where
        self._retry_s = retry_s
        self._max_retry_s = max(retry_s, max_retry_s)
        self._wait_s = retry_s
        self._write_disabled = False
        self._retry_at = 0.0
        self.last_fault = ""

    def corrupt(self, kind: CorruptionKind) -> None:
        self.add_many({"corrupt_dropped": 1, f"corrupt_{kind.value}": 1})

    # -- faults --------------------------------------------------------------------------
    @property
    def write_disabled(self) -> bool:
        return self._write_disabled

    def writes_blocked(self) -> bool:
        """True while faulted and the retry time has not come."""
        with self._lock:
            return self._write_disabled and time.monotonic() < self._retry_at

    def fault(self, operation: str, exc: OSError, kind: str) -> None:
        with self._lock:
            self._counts["faults"] += 1
            self._counts[f"fault_{kind}"] += 1
            first = not self._write_disabled
            if not first:
                self._wait_s = min(self._wait_s * 2, self._max_retry_s)
            self._write_disabled = True
            self._retry_at = time.monotonic() + self._wait_s
            self.last_fault = f"{operation}: {exc}"
            wait = self._wait_s
        if first:
            logger.warning(
                "NVMe tier at %s: %s failed (%s: %s). The tier stops writing, keeps serving "
                "what it can still read, and retries writing in %.0f s.",
                self._where,
                operation,
                kind,
                exc,
                wait,
            )
        else:
            logger.debug("NVMe tier at %s: %s failed again: %s", self._where, operation, exc)

    def write_succeeded(self) -> None:
        if not self._write_disabled:
            return
        with self._lock:
            was_disabled, self._write_disabled = self._write_disabled, False
            self._wait_s = self._retry_s
        if was_disabled:
            logger.info(
                "NVMe tier at %s: writes work again; the tier resumes writing.", self._where
            )

    def snapshot(self) -> dict[str, float]:
        out = super().snapshot()
        out["write_disabled"] = float(self._write_disabled)
        return out


@dataclass
class WriteReport:
    """Per-call outcome of submit_writes (chunk counts)."""

    written: int = 0
    present: int = 0
    rejected: int = 0
    skipped: int = 0
    failed: int = 0
    written_bytes: int = 0
    seconds: float = 0.0

    def counter_increments(self) -> dict[str, float]:
        return {
            "writes": self.written,
            "write_bytes": self.written_bytes,
            "write_seconds": self.seconds,
            "write_failures": self.failed,
        }

    @property
    def ok(self) -> bool:
        """Every chunk is now on disk (written now or earlier)."""
        return self.rejected == self.skipped == self.failed == 0
