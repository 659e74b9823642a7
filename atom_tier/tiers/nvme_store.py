"""NvmeChunkStore: a capacity-capped, checksummed, restart-persistent chunk store on disk.

No vLLM here: keys are bytes, payloads are buffers. The scheduler-facing calls (lookup,
touch, submit_writes, submit_reads) only touch the in-memory index and hand I/O to one
asyncio loop thread; they return concurrent futures. ``vllm_tier`` adapts this to vLLM's
secondary-tier contract.

Guarantees:
- bytes on disk (published + being written + evicted-not-yet-deleted) never exceed the cap;
- a chunk is published by rename after its write completed, and every read verifies header,
  key and payload checksum: anything else is a miss, the file is removed and counted;
- at start-up the index is rebuilt from the directory (see ``rebuild``), in the background:
  until it is done lookups miss and writes are skipped, so server start-up never waits;
- an I/O fault stops writes (see ``tier_stats.TierCounters``), never raises to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Coroutine, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from atom_tier.log import get_logger
from atom_tier.tiers.aio import ChunkEngine, make_engine
from atom_tier.tiers.chunk_format import (
    TEMP_SUFFIX,
    ChunkFormatError,
    chunk_digest,
    chunk_relpath,
    file_size_for,
)
from atom_tier.tiers.index import ChunkIndex, Victim
from atom_tier.tiers.rebuild import (
    auto_capacity_bytes,
    open_tier_dir,
    remove_quietly,
    scan_chunk_dir,
    set_mtimes,
    unlink_each,
)
from atom_tier.tiers.tier_stats import TierCounters, WriteReport, fault_kind

logger = get_logger(__name__)
_T = TypeVar("_T")
# Reads mark chunks used by setting their mtime (the LRU order after a restart), batched:
# a metadata write per read halved small-chunk read throughput here.
USE_FLUSH_DELAY_S = 2.0


@dataclass(frozen=True)
class _Plan:
    """A chunk write decided on the scheduler thread (reserved, victims chosen)."""

    key: bytes
    digest: str
    payload: memoryview
    victims: list[Victim]
    temp: str
    final: str


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
        self._rebuild = (0.0, 0)
        self._lock_fd: int | None = None
        self._seq = itertools.count()
        self._inflight: set[Future[Any]] = set()
        self._inflight_lock = threading.Lock()
        self._space = asyncio.Condition()  # notified whenever a chunk file is deleted
        self._used_paths: set[str] = set()  # loop-owned, see USE_FLUSH_DELAY_S
        self._use_flush: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(io_threads, thread_name_prefix="atom_tier_nvme")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="atom_tier_nvme_loop", daemon=True
        )
        self._thread.start()
        self._track(self._start())

    # -- start-up ------------------------------------------------------------------------
    async def _start(self) -> None:
        try:
            await self._start_up()
        except Exception as exc:  # the server keeps running without this tier
            self.unavailable_reason = str(exc)
            logger.error("NVMe tier at %s is unavailable: %s", self.root, exc)
        finally:
            self._started.set()

    async def _start_up(self) -> None:
        self._lock_fd = await self._run(open_tier_dir, self.root)
        self.engine = await make_engine(
            self._loop, self._executor, str(self.root), self._engine_kind
        )
        scan = await self._run(scan_chunk_dir, self.root)
        for _mtime_ns, digest, size in scan.chunks:
            self.index.add_existing(digest, size)
        capacity = self._requested_capacity
        if capacity is None:
            auto = await self._run(auto_capacity_bytes, self.root, scan.total_bytes)
            capacity = int(auto * self._auto_share) // 4096 * 4096
        await self._delete(self.index.set_capacity(capacity))
        self.counters.add("temp_files_removed", scan.temp_removed)
        self.counters.add_many(
            {"corrupt_dropped": scan.truncated_removed, "corrupt_truncated": scan.truncated_removed}
        )
        self._rebuild = (scan.seconds, len(scan.chunks))
        chunks, used = self.index.published_stats()
        summary = (
            f"{len(scan.chunks)} chunks found ({chunks} kept, {used / 2**30:.2f} GiB), "
            f"{scan.temp_removed} temp and {scan.truncated_removed} truncated files removed"
        )
        logger.info(
            "NVMe tier at %s: %s I/O, cap %.2f GiB; index rebuilt from disk in %.3f s: %s",
            *(self.root, self.engine.name, capacity / 2**30, scan.seconds, summary),
        )
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
            final = self._path(digest)
            temp = f"{final}.{os.getpid()}.{next(self._seq)}{TEMP_SUFFIX}"
            plans.append(_Plan(key, digest, payload, victims, temp, final))
        return self._track(self._write_job(plans, report))

    def submit_reads(self, items: Sequence[tuple[bytes, memoryview]]) -> Future[list[bool]]:
        """Read chunks into the given buffers; per chunk True when it verified."""
        wanted = []
        for key, out in items:
            digest = self.digest(key)
            pinned = self._ready.is_set() and self.index.pin(digest)
            wanted.append((key, digest, out, pinned))
        return self._track(self._read_job(wanted))

    # -- blocking helpers (tests, benchmarks) ---------------------------------------------
    def write(self, key: bytes, payload: memoryview | bytes) -> WriteReport:
        return self.submit_writes([(key, memoryview(payload))]).result()

    def read(self, key: bytes, out: memoryview | bytearray) -> bool:
        return self.submit_reads([(key, memoryview(out))]).result()[0]

    def drain(self) -> None:
        """Wait for every submitted write and read."""
        while True:
            with self._inflight_lock:
                pending = list(self._inflight)
            if not pending:
                return
            for future in pending:
                with contextlib.suppress(Exception):
                    future.result()

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
        if self._loop.is_closed():
            return
        self._started.wait()
        self.drain()
        asyncio.run_coroutine_threadsafe(self._flush_uses(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._executor.shutdown(wait=True)
        if self.engine is not None:
            self.engine.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # also releases the flock
            self._lock_fd = None

    # -- I/O on the loop -----------------------------------------------------------------
    def _track(self, coro: Coroutine[Any, Any, _T]) -> Future[_T]:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        with self._inflight_lock:
            self._inflight.add(future)
        future.add_done_callback(self._untrack)
        return future

    def _untrack(self, future: Future[Any]) -> None:
        with self._inflight_lock:
            self._inflight.discard(future)

    def _run(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return self._loop.run_in_executor(self._executor, fn, *args)

    def _path(self, digest: str) -> str:
        return str(self.root / chunk_relpath(digest))

    async def _delete(self, victims: list[Victim], evicted: bool = True) -> None:
        if evicted and victims:
            self.counters.add_many(
                {"evictions": len(victims), "evicted_bytes": sum(v.size for v in victims)}
            )
        if not victims:
            return
        errors = await self._run(unlink_each, [self._path(v.digest) for v in victims])
        for victim, error in zip(victims, errors, strict=True):
            if error is None or isinstance(error, FileNotFoundError):
                self.index.deleted(victim)
            else:  # the file may still be there: its bytes stay counted against the cap
                self.index.delete_failed(victim)
                self.counters.fault("delete", error, fault_kind(error, self.root.is_dir()))
        async with self._space:
            self._space.notify_all()

    async def _claim(self, digest: str) -> bool:
        """Wait until the chunk fits on disk next to everything there (see ``index``)."""
        async with self._space:
            while not self.index.claim(digest):
                if self.index.pending_deletes == 0:
                    return False  # only undeletable files stand in the way
                await self._space.wait()
        return True

    async def _write_job(self, plans: list[_Plan], report: WriteReport) -> WriteReport:
        assert self.engine is not None or not plans
        await self._delete([victim for plan in plans for victim in plan.victims])
        ready = []
        for plan in plans:
            if await self._claim(plan.digest):
                ready.append(plan)
            else:
                self.index.abort(plan.digest)
                report.rejected += 1
                self.counters.add("stores_rejected")
        if not ready or self.engine is None:
            return report
        start = time.monotonic()
        errors = await self.engine.write_chunks(
            [(p.temp, p.final, self.namespace, p.key, p.payload) for p in ready]
        )
        report.seconds += time.monotonic() - start
        failed = [(plan, e) for plan, e in zip(ready, errors, strict=True) if e is not None]
        if failed:
            await self._run(remove_quietly, [plan.temp for plan, _ in failed])
        for plan, error in zip(ready, errors, strict=True):
            if error is None:
                self.index.publish(plan.digest)
                report.written += 1
                report.written_bytes += plan.payload.nbytes
            else:
                self.index.abort(plan.digest)  # after the unlink: its bytes count until gone
                report.failed += 1
        self.counters.add_many(report.counter_increments())
        if failed:
            exc = failed[0][1]
            assert isinstance(exc, OSError)
            self.counters.fault("write", exc, fault_kind(exc, self.root.is_dir()))
        elif report.written:
            self.counters.write_succeeded()
        return report

    async def _read_job(self, wanted: list[tuple[bytes, str, memoryview, bool]]) -> list[bool]:
        results = [False] * len(wanted)
        todo = [i for i, (_k, _d, _o, pinned) in enumerate(wanted) if pinned]
        self.counters.add("read_failures", len(wanted) - len(todo))
        if not todo:
            return results
        assert self.engine is not None
        start = time.monotonic()
        picked = [wanted[i] for i in todo]
        try:
            items = [(self._path(d), self.namespace, k, o) for k, d, o, _p in picked]
            errors = await self.engine.read_chunks(items)
        finally:
            for _key, digest, _out, _pinned in picked:
                self.index.unpin(digest)
        loaded = 0
        for i, error in zip(todo, errors, strict=True):
            _key, digest, out, _pinned = wanted[i]
            path = self._path(digest)
            if error is None:
                results[i] = True
                loaded += out.nbytes
                self._used_paths.add(path)
                continue
            if isinstance(error, ChunkFormatError):
                self.counters.corrupt(error.kind)
                logger.warning("NVMe tier: dropped chunk %s (%s)", path, error)
            elif isinstance(error, FileNotFoundError) and self.root.is_dir():
                self.counters.add("vanished")  # deleted behind our back: a plain miss
            else:
                assert isinstance(error, OSError)
                self.counters.fault("read", error, fault_kind(error, self.root.is_dir()))
            await self._drop(digest)
        self.counters.add_many(
            {"reads": sum(results), "read_bytes": loaded, "read_seconds": time.monotonic() - start}
        )
        if self._used_paths and self._use_flush is None:
            self._use_flush = self._loop.call_later(
                USE_FLUSH_DELAY_S, lambda: self._track(self._flush_uses())
            )
        return results

    async def _flush_uses(self) -> None:
        if self._use_flush is not None:
            self._use_flush.cancel()
            self._use_flush = None
        paths, self._used_paths = self._used_paths, set()
        if paths:
            await self._run(set_mtimes, paths)

    async def _drop(self, digest: str) -> None:
        self.counters.add("read_failures")
        victim = self.index.remove(digest)
        if victim is not None:
            await self._delete([victim], evicted=False)
