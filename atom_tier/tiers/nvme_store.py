"""NvmeChunkStore: a capacity-capped, checksummed, restart-persistent chunk store on disk.

No vLLM here: keys are bytes, payloads are buffers. The scheduler-facing calls (lookup,
touch, submit_writes, submit_reads) only touch the in-memory index and hand I/O to the
store's I/O threads; they return concurrent futures. ``vllm_tier`` adapts this to vLLM's
secondary-tier contract.

A job's chunks run in groups on the I/O threads (``io_jobs``): each group does its
deletions, claims, I/O, checks and index updates back to back on one thread.

Guarantees:
- bytes on disk (published + being written + evicted-not-yet-deleted) never exceed the cap;
- a chunk is published by rename after its write completed, and every read verifies header,
  key and payload checksum: anything else is a miss, the file is removed and counted;
- at start-up the index is rebuilt from the directory (see ``rebuild``), in the background:
  until it is done lookups miss and writes are skipped, so server start-up never waits;
- an I/O fault stops writes (see ``tier_stats.TierCounters``), never raises to the caller.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from atom_tier.log import get_logger
from atom_tier.tiers.chunk_format import TEMP_SUFFIX, ChunkFormatError, chunk_digest, file_size_for
from atom_tier.tiers.chunk_space import ChunkSpace
from atom_tier.tiers.engines import ChunkEngine, make_engine
from atom_tier.tiers.index import ChunkIndex, Victim
from atom_tier.tiers.io_jobs import JobsInFlight, submit_job
from atom_tier.tiers.rebuild import (
    UseMarks,
    auto_capacity_bytes,
    log_start,
    open_tier_dir,
    remove_quietly,
    scan_chunk_dir,
)
from atom_tier.tiers.tier_stats import TierCounters, WriteReport, fault_kind

logger = get_logger(__name__)
_R = TypeVar("_R")
# A group's claims wait at most this long in all for deletions in flight (run by other
# groups); after that a chunk is not written (counted as rejected) rather than holding an I/O
# thread.
CLAIM_WAIT_S = 1.0
# Per planned chunk: None (written), the OSError that stopped it, or False (no room).
_WriteOutcome = Exception | bool | None


@dataclass(frozen=True)
class _Plan:
    """A chunk write decided on the scheduler thread (reserved, victims chosen)."""

    key: bytes
    digest: str
    payload: memoryview
    victims: list[Victim]
    temp: str
    final: str


@dataclass(frozen=True)
class _Wanted:
    """A chunk read: its position in the caller's list, and a pin held on it."""

    position: int
    key: bytes
    digest: str
    out: memoryview


class NvmeChunkStore:
    """See the module docstring. ``capacity_bytes=None`` sizes the tier from free space
    (``rebuild.auto_capacity_bytes``), of which it takes ``auto_share``."""

    def __init__(
        self,
        root: Path | str,
        capacity_bytes: int | None,
        *,
        namespace: bytes = b"",
        engine: str = "auto",
        io_threads: int = 8,
        fault_retry_s: float = 60.0,
        auto_share: float = 1.0,
    ) -> None:
        self.root = Path(root)
        self._auto_share = auto_share  # of the automatic cap (stores sharing a filesystem)
        self.namespace = namespace
        self._requested_capacity = capacity_bytes
        self._engine_kind = engine
        self.index = ChunkIndex(capacity_bytes or 0)
        self.counters = TierCounters(str(self.root), retry_s=fault_retry_s)
        self.engine: ChunkEngine | None = None
        self.unavailable_reason = ""
        self._ready = threading.Event()
        self._started = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()
        self._rebuild = (0.0, 0)
        self._lock_fd: int | None = None
        self._seq = itertools.count()
        self._inflight = JobsInFlight()
        self.space = ChunkSpace(self.root, self.index, self.counters)
        self._uses = UseMarks()
        self._executor = ThreadPoolExecutor(io_threads, thread_name_prefix="atom_tier_nvme")
        self._start_thread = threading.Thread(
            target=self._start, name="atom_tier_nvme_start", daemon=True
        )
        self._start_thread.start()

    # -- start-up ------------------------------------------------------------------------
    def _start(self) -> None:
        try:
            self._start_up()
        except Exception as exc:  # the server keeps running without this tier
            self.unavailable_reason = str(exc)
            logger.error("NVMe tier at %s is unavailable: %s", self.root, exc)
        finally:
            self._started.set()

    def _start_up(self) -> None:
        self._lock_fd = open_tier_dir(self.root)
        self.engine = make_engine(str(self.root), self._engine_kind)
        scan = scan_chunk_dir(self.root)
        for _mtime_ns, digest, size in scan.chunks:
            self.index.add_existing(digest, size)
        capacity = self._requested_capacity
        if capacity is None:
            capacity = auto_capacity_bytes(self.root, scan.total_bytes, self._auto_share)
        self.space.unlink(self.index.set_capacity(capacity))
        self.counters.add("temp_files_removed", scan.temp_removed)
        self.counters.add_many(
            {"corrupt_dropped": scan.truncated_removed, "corrupt_truncated": scan.truncated_removed}
        )
        self._rebuild = (scan.seconds, len(scan.chunks))
        chunks, used = self.index.published_stats()
        log_start(self.root, self.engine.name, capacity, scan, chunks, used)
        self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until start-up finished; True when the tier is usable."""
        self._started.wait(timeout)
        return self._ready.is_set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    # -- scheduler-facing, non-blocking --------------------------------------------------
    def digest(self, key: bytes) -> str:
        return chunk_digest(self.namespace, key)

    def lookup(self, key: bytes) -> bool:
        hit = self._ready.is_set() and self.index.is_published(self.digest(key))
        self.counters.add_many({"lookups": 1, "hits" if hit else "misses": 1})
        return hit

    def touch(self, keys: Iterable[bytes]) -> None:
        if self._ready.is_set():
            self.index.touch(self.digest(k) for k in keys)

    def submit_writes(self, items: Sequence[tuple[bytes, memoryview]]) -> Future[WriteReport]:
        """Write chunks not on disk yet; the payload buffers must stay valid until done."""
        report = WriteReport()
        plans = []
        for key, payload in items:
            if not self._ready.is_set():
                report.skipped += 1
                self.counters.add("stores_skipped_not_ready")
                continue
            digest = self.digest(key)
            if self.index.knows(digest):
                report.present += 1
                self.counters.add("stores_present")
                continue
            if self.counters.writes_blocked():
                report.skipped += 1
                self.counters.add("stores_skipped_disabled")
                continue
            victims = self.index.reserve(digest, file_size_for(payload.nbytes))
            if victims is None:
                report.rejected += 1
                self.counters.add("stores_rejected")
                continue
            final = self.space.path(digest)
            temp = f"{final}.{os.getpid()}.{next(self._seq)}{TEMP_SUFFIX}"
            plans.append(_Plan(key, digest, payload, victims, temp, final))
        finish = functools.partial(self._finish_writes, report, time.monotonic())
        job = submit_job(
            self._executor, plans, lambda plan: plan.payload.nbytes, self._write_group, finish
        )
        return self._inflight.track(job)

    def submit_reads(self, items: Sequence[tuple[bytes, memoryview]]) -> Future[list[bool]]:
        """Read chunks into the given buffers; per chunk True when it verified."""
        wanted = []
        for position, (key, out) in enumerate(items):
            digest = self.digest(key)
            if self._ready.is_set() and self.index.pin(digest):
                wanted.append(_Wanted(position, key, digest, out))
        self.counters.add("read_failures", len(items) - len(wanted))
        finish = functools.partial(self._finish_reads, len(items), time.monotonic())
        job = submit_job(
            self._executor, wanted, lambda chunk: chunk.out.nbytes, self._read_group, finish
        )
        return self._inflight.track(job)

    # -- blocking helpers (tests, benchmarks) ---------------------------------------------
    def write(self, key: bytes, payload: memoryview | bytes) -> WriteReport:
        return self.submit_writes([(key, memoryview(payload))]).result()

    def read(self, key: bytes, out: memoryview | bytearray) -> bool:
        return self.submit_reads([(key, memoryview(out))]).result()[0]

    def drain(self) -> None:
        """Wait for every submitted write and read."""
        self._inflight.drain()

    def stats(self) -> dict[str, float]:
        out = self.counters.snapshot()
        chunks, chunk_bytes = self.index.published_stats()
        out.update(
            ready=float(self._ready.is_set()),
            usage_bytes=float(self.index.used_bytes),
            capacity_bytes=float(self.index.capacity_bytes),
            chunks=float(chunks),
            chunk_bytes=float(chunk_bytes),
            o_direct=float(bool(self.engine and self.engine.o_direct)),
            rebuild_seconds=self._rebuild[0],
            rebuild_chunks=float(self._rebuild[1]),
        )
        return out

    def close(self) -> None:
        """Finish in-flight I/O and release the directory; safe to call twice."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._started.wait()
        self._start_thread.join()
        self.drain()
        self._uses.close()
        self._executor.shutdown(wait=True)
        if self.engine is not None:
            self.engine.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # also releases the flock
            self._lock_fd = None

    # -- jobs on the I/O threads ---------------------------------------------------------
    def _write_group(self, plans: list[_Plan]) -> list[tuple[_Plan, _WriteOutcome]]:
        """Per plan: None (written), an OSError, or False (no room: not written)."""
        outcomes: list[tuple[_Plan, _WriteOutcome]] = []
        try:
            self._write_plans(plans, outcomes)
        except BaseException:  # never expected; leave no reservation or temp file behind
            settled = {plan.digest for plan, _outcome in outcomes}
            unsettled = [plan for plan in plans if plan.digest not in settled]
            remove_quietly([plan.temp for plan in unsettled])
            for plan in unsettled:
                self.index.abort(plan.digest)
            raise
        return outcomes

    def _write_plans(self, plans: list[_Plan], outcomes: list[tuple[_Plan, _WriteOutcome]]) -> None:
        self.space.unlink([victim for plan in plans for victim in plan.victims])
        deadline = time.monotonic() + CLAIM_WAIT_S  # for the whole group
        ready = []
        for plan in plans:
            if self.space.claim(plan.digest, deadline):
                ready.append(plan)
            else:
                self.index.abort(plan.digest)
                outcomes.append((plan, False))
        if not ready:
            return
        assert self.engine is not None  # plans exist only once the tier is ready
        errors = self.engine.write_chunks(
            [(p.temp, p.final, self.namespace, p.key, p.payload) for p in ready]
        )
        failed = [plan.temp for plan, e in zip(ready, errors, strict=True) if e is not None]
        if failed:
            remove_quietly(failed)
        for plan, error in zip(ready, errors, strict=True):
            if error is None:
                self.index.publish(plan.digest)
            else:
                self.index.abort(plan.digest)  # after the unlink: its bytes count until gone
            outcomes.append((plan, error))

    def _finish_writes(
        self,
        report: WriteReport,
        started: float,
        outcomes: list[tuple[_Plan, _WriteOutcome]],
    ) -> WriteReport:
        fault: OSError | None = None
        for plan, outcome in outcomes:
            if outcome is None:
                report.written += 1
                report.written_bytes += plan.payload.nbytes
            elif outcome is False:
                report.rejected += 1
                self.counters.add("stores_rejected")
            else:
                report.failed += 1
                if fault is None and isinstance(outcome, OSError):
                    fault = outcome
        if report.written or report.failed:
            report.seconds += time.monotonic() - started
        self.counters.add_many(report.counter_increments())
        if fault is not None:
            self.counters.fault("write", fault, fault_kind(fault, self.space.root_exists()))
        elif report.written:
            self.counters.write_succeeded()
        return report

    def _read_group(self, chunks: list[_Wanted]) -> list[tuple[_Wanted, str | None]]:
        """Per chunk its path when it verified, else None (the chunk is dropped here)."""
        assert self.engine is not None  # pins exist only once the tier is ready
        paths = [self.space.path(c.digest) for c in chunks]
        try:
            errors = self.engine.read_chunks(
                [(paths[i], self.namespace, c.key, c.out) for i, c in enumerate(chunks)]
            )
        finally:
            for chunk in chunks:
                self.index.unpin(chunk.digest)
        outcomes: list[tuple[_Wanted, str | None]] = []
        for chunk, path, error in zip(chunks, paths, errors, strict=True):
            outcomes.append((chunk, path if error is None else None))
            if error is None:
                continue
            if isinstance(error, ChunkFormatError):
                self.counters.corrupt(error.kind)
                logger.warning("NVMe tier: dropped chunk %s (%s)", path, error)
            elif isinstance(error, FileNotFoundError) and self.space.root_exists():
                self.counters.add("vanished")  # deleted behind our back: a plain miss
            else:
                assert isinstance(error, OSError)
                self.counters.fault("read", error, fault_kind(error, self.space.root_exists()))
            self.counters.add("read_failures")
            victim = self.index.remove(chunk.digest)
            if victim is not None:
                self.space.unlink([victim], evicted=False)
        return outcomes

    def _finish_reads(
        self, count: int, started: float, outcomes: list[tuple[_Wanted, str | None]]
    ) -> list[bool]:
        results = [False] * count
        loaded = 0
        used = []
        for chunk, path in outcomes:
            if path is not None:
                results[chunk.position] = True
                loaded += chunk.out.nbytes
                used.append(path)
        if outcomes:
            self.counters.add_many(
                {
                    "reads": len(used),
                    "read_bytes": loaded,
                    "read_seconds": time.monotonic() - started,
                }
            )
        if used:
            self._uses.add(used)
        return results
