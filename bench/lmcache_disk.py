"""atom-tier's NVMe chunk store against LMCache 0.5.6's local disk backend, same run.

Both write the same N chunks of S random bytes into the same filesystem and read them back;
printed: write and read bandwidth (GB/s = 1e9 B/s, median of --repeat passes, the two
backends alternating first and second), atom-tier / LMCache, and bytes on disk per byte
stored. Everything read back is compared with what was written; a mismatch is reported
and the script exits 1.

    .venv-lmcache/bin/python bench/lmcache_disk.py [--dir /mnt/nvme/bench --lmcache-odirect]

LMCache lives in its own environment: it pins numpy<=2.2.6 and prometheus_client<=0.24.1,
which break .venv. `make bench-lmcache-env` runs (about 80 s here, 1.9 GB):

    python3.11 -m venv .venv-lmcache
    .venv-lmcache/bin/pip install 'torch==2.13.0+cpu'
    .venv-lmcache/bin/pip install 'torch==2.13.0+cpu' 'lmcache==0.5.6'
    .venv-lmcache/bin/pip install -e .

torch is named again in the second install so pip keeps the CPU build (lmcache's wheel is
CUDA-built but requires plain `torch`); its CUDA Python deps (cupy, cuda-python) install
but are never loaded on a machine without a GPU.

How LMCache is driven (its own code, nothing copied):

* construction: `CreateStorageBackends(config, metadata, loop)`, the factory its
  StorageManager calls, with `LMCacheEngineConfig.from_dict({local_disk, max_local_disk_size,
  local_cpu: False, max_local_cpu_size, extra_config})` and an `LMCacheMetadata`, on an
  asyncio loop in its own thread (as StorageManager does). Without a GPU LMCache selects its
  CPU platform (StubCPUDevice, CpuDeviceOps): LocalCPUBackend's MixedMemoryAllocator gets a
  page-aligned, unpinned host buffer from torch; no CUDA is touched.
* writes: chunks are copied (untimed, as the engine's GPU->CPU copy) into MemoryObjs from
  `LocalCPUBackend.allocate`, then per batch `LocalDiskBackend.batched_submit_put_task(keys,
  objs, on_complete_callback=...)` and `ref_count_down()` on each object (what
  StorageManager.batched_put does). LMCache writes asynchronously (4 `disk_io_threads`): the
  clock stops when the callback, which LMCache runs after `write_file` returned and the key
  entered its index, has fired for every chunk. LMCache writes through the page cache
  unless `extra_config.use_odirect` (`--lmcache-odirect` adds that arm) and never fsyncs, so
  "write+sync" also times a syncfs() of the filesystem afterwards, for both backends.
* reads: `LocalDiskBackend.batched_get_blocking(keys)` per batch (the engine's blocking
  retrieve), objects verified and released with `ref_count_down()` untimed. The pool is
  filled with a pattern before the reads: LMCache does not check for short reads, and a
  read slot that still held the chunk from the write would hide a truncated file.

atom-tier: `NvmeChunkStore(engine="direct")`: `submit_writes` for every batch, then the
futures; reads `submit_reads(batch).result()` one batch at a time, into a page-aligned buffer
like the DRAM tier's. Cached file data is dropped before every read pass when run as root.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from nvme_tier import aligned, drop_caches, machine, raw_files

MIB = 2**20
GIB = 2**30
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Pass:
    write_s: float
    sync_s: float
    read_s: float
    disk_bytes: int
    files: int
    bad: int  # chunks read back wrong or missing


def syncfs(directory: Path) -> float:
    """Seconds to flush the filesystem holding ``directory`` (LMCache never fsyncs)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        start = time.perf_counter()
        if _libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
        return time.perf_counter() - start
    finally:
        os.close(fd)


def on_disk(directory: Path) -> tuple[int, int]:
    """(allocated bytes, regular files) under ``directory``."""
    size = files = 0
    for folder, _dirs, names in os.walk(directory):
        for name in names:
            size += os.lstat(os.path.join(folder, name)).st_blocks * 512
            files += 1
    return size, files


def wrong(got: memoryview | Any, want: np.ndarray) -> bool:
    return not np.array_equal(np.frombuffer(got, dtype=np.uint8), want)


def batches(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


# -- atom-tier -----------------------------------------------------------------------------
def atom_pass(work: Path, src: np.ndarray, chunk: int, batch: int) -> Pass:
    from atom_tier.tiers.nvme_store import NvmeChunkStore

    n = len(src) // chunk
    root = work / "atom-tier"
    store = NvmeChunkStore(root, 2 * n * (chunk + 4096), namespace=b"bench", engine="direct")
    assert store.wait_ready(60), store.unavailable_reason
    view = memoryview(src)
    keys = [b"chunk-%d" % i for i in range(n)]
    drop_caches()
    start = time.perf_counter()
    futures = [
        store.submit_writes([(keys[i], view[i * chunk : (i + 1) * chunk]) for i in group])
        for group in batches(n, batch)
    ]
    written = sum(future.result().written for future in futures)
    write_s = time.perf_counter() - start
    if written != n:
        raise RuntimeError(f"atom-tier wrote {written} of {n} chunks: {store.stats()}")
    sync_s = syncfs(root)
    disk_bytes, files = on_disk(root)
    drop_caches()
    out = aligned(batch * chunk, fill=False)
    dst = memoryview(out)
    read_s, bad = 0.0, 0
    for group in batches(n, batch):
        items = [(keys[i], dst[j * chunk : (j + 1) * chunk]) for j, i in enumerate(group)]
        start = time.perf_counter()
        ok = store.submit_reads(items).result()
        read_s += time.perf_counter() - start
        for j, i in enumerate(group):
            bad += not ok[j] or wrong(items[j][1], src[i * chunk : (i + 1) * chunk])
    store.close()
    shutil.rmtree(root)
    return Pass(write_s, sync_s, read_s, disk_bytes, files, bad)


# -- LMCache ---------------------------------------------------------------------------------
class LMCacheDisk:
    """LMCache's LocalCPUBackend (allocator) + LocalDiskBackend, built as its engine does."""

    def __init__(self, root: Path, pool_bytes: int, disk_bytes: int, odirect: bool) -> None:
        import torch
        from lmcache.v1.config import LMCacheEngineConfig
        from lmcache.v1.metadata import LMCacheMetadata
        from lmcache.v1.storage_backend import CreateStorageBackends

        self.config = LMCacheEngineConfig.from_dict(
            {
                "chunk_size": 256,
                "local_cpu": False,  # no hot DRAM cache: LocalCPUBackend only allocates
                "max_local_cpu_size": pool_bytes / GIB,
                "local_disk": str(root),
                "max_local_disk_size": disk_bytes / GIB,
                "extra_config": {"use_odirect": odirect},
            }
        )
        metadata = LMCacheMetadata("bench", 1, 1, 0, 0, torch.uint8, (1, 2, 256, 1, 256))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        backends = CreateStorageBackends(self.config, metadata, self.loop)
        self.cpu: Any = backends["LocalCPUBackend"]
        self.disk: Any = backends["LocalDiskBackend"]

    def key(self, i: int) -> Any:
        import torch
        from lmcache.utils import CacheEngineKey

        return CacheEngineKey("bench", 1, 0, i + 1, torch.uint8)

    def allocate(self, chunk: int) -> Any:
        import torch
        from lmcache.v1.memory_management import MemoryFormat

        shape = torch.Size([2, 1, 256, chunk // 512])  # KV_2LTD, uint8: chunk bytes
        obj = self.cpu.allocate(shape, torch.uint8, MemoryFormat.KV_2LTD)
        if obj is None or obj.get_size() != chunk:
            raise RuntimeError(f"LMCache allocator gave {obj} for {chunk} bytes")
        return obj

    def close(self) -> None:
        self.disk.close()
        self.cpu.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def lmcache_pass(work: Path, src: np.ndarray, chunk: int, batch: int, odirect: bool) -> Pass:
    n = len(src) // chunk
    root = work / "lmcache"
    lmc = LMCacheDisk(root, n * chunk + 64 * MIB, 2 * n * chunk, odirect)
    keys = [lmc.key(i) for i in range(n)]
    objs = [lmc.allocate(chunk) for _ in range(n)]
    for i, obj in enumerate(objs):  # the engine's GPU->CPU copy: not timed
        np.frombuffer(obj.byte_array, dtype=np.uint8)[:] = src[i * chunk : (i + 1) * chunk]
    done, lock, finished = [0], threading.Lock(), threading.Event()

    def written(_key: Any) -> None:
        with lock:
            done[0] += 1
            if done[0] == n:
                finished.set()

    drop_caches()
    start = time.perf_counter()
    for group in batches(n, batch):
        objs_b = [objs[i] for i in group]
        lmc.disk.batched_submit_put_task(
            [keys[i] for i in group], objs_b, on_complete_callback=written
        )
        for obj in objs_b:  # StorageManager.batched_put drops its reference after submit
            obj.ref_count_down()
    if not finished.wait(600):
        raise RuntimeError(f"LMCache finished {done[0]} of {n} puts in 600 s")
    write_s = time.perf_counter() - start
    del objs
    missing = sum(not lmc.disk.contains(k) for k in keys)
    if missing:
        raise RuntimeError(f"LMCache reports {missing} of {n} written chunks missing")
    sync_s = syncfs(root)
    disk_bytes, files = on_disk(root)
    # The read slots come from the pool the writes used: poison it, or a short read (which
    # LMCache does not check) would leave the right bytes in place and go unnoticed.
    lmc.cpu.memory_allocator.buffer.fill_(0x5A)
    drop_caches()
    read_s, bad = 0.0, 0
    for group in batches(n, batch):
        start = time.perf_counter()
        got = lmc.disk.batched_get_blocking([keys[i] for i in group])
        read_s += time.perf_counter() - start
        for obj, i in zip(got, group, strict=True):
            bad += obj is None or wrong(obj.byte_array, src[i * chunk : (i + 1) * chunk])
            if obj is not None:
                obj.ref_count_down()
    lmc.close()
    shutil.rmtree(root)
    return Pass(write_s, sync_s, read_s, disk_bytes, files, bad)


# -- main -----------------------------------------------------------------------------------
def median_rate(passes: list[Pass], nbytes: int, seconds: Callable[[Pass], float]) -> float:
    return statistics.median(nbytes / seconds(p) / 1e9 for p in passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default /tmp)")
    parser.add_argument("--chunk-mib", type=float, nargs="+", default=[0.125, 2.0, 16.0])
    parser.add_argument("--total-mib", type=int, default=512, help="bytes per pass")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-chunks", type=int, default=32, help="chunks per put/get call")
    parser.add_argument(
        "--lmcache-odirect", action="store_true", help="also LMCache with use_odirect=True"
    )
    parser.add_argument(
        "--raw-files",
        action="store_true",
        help="also one O_DIRECT file per chunk, 8 threads, no header or checksum: what any "
        "store of a file per chunk can reach on this disk",
    )
    args = parser.parse_args()
    os.environ.setdefault("LMCACHE_LOG_LEVEL", "ERROR")
    os.environ.setdefault("LMCACHE_TRACK_USAGE", "false")
    import lmcache  # noqa: F401  (fail early, outside any timing)

    base = args.dir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lmcache-disk-bench-", dir=base))
    arms: dict[str, Callable[[Path, np.ndarray, int, int], Pass]] = {
        "atom-tier": atom_pass,
        "LMCache": lambda w, s, c, b: lmcache_pass(w, s, c, b, odirect=False),
    }
    if args.lmcache_odirect:
        arms["LMCache O_DIRECT"] = lambda w, s, c, b: lmcache_pass(w, s, c, b, odirect=True)
    failed = False
    try:
        for key, value in machine(work).items():
            print(f"{key:>10}: {value}")
        print(f"{'directory':>10}: {work}")
        print(f"{'versions':>10}: lmcache {version('lmcache')}, torch {version('torch')}")
        print(f"{'caches':>10}: {'dropped before reads' if drop_caches() else 'NOT dropped'}")
        for chunk_mib in args.chunk_mib:
            chunk = int(chunk_mib * MIB) // 4096 * 4096
            n = max(1, args.total_mib * MIB // chunk)
            src = np.frombuffer(aligned(n * chunk), dtype=np.uint8)
            results: dict[str, list[Pass]] = {name: [] for name in arms}
            raw: list[tuple[float, float]] = []
            for r in range(args.repeat):
                order = list(arms) if r % 2 == 0 else list(reversed(arms))
                for name in order:
                    results[name].append(arms[name](work, src, chunk, args.batch_chunks))
                if args.raw_files:
                    raw.append(raw_files(Path(tempfile.mkdtemp(dir=work)), n, chunk, 8))
            total = n * chunk
            print(
                f"\nchunk {chunk / MIB:g} MiB x {n} ({total / MIB:.0f} MiB/pass), "
                f"{args.batch_chunks} chunks per call, median of {args.repeat}"
            )
            print(
                f"{'':<18}{'write GB/s':>11}{'write+sync':>11}{'read GB/s':>11}"
                f"{'disk/payload':>14}{'files':>7}{'bad reads':>11}"
            )
            rates: dict[str, tuple[float, float, float]] = {}
            for name, passes in results.items():
                w = median_rate(passes, total, lambda p: p.write_s)
                ws = median_rate(passes, total, lambda p: p.write_s + p.sync_s)
                rd = median_rate(passes, total, lambda p: p.read_s)
                rates[name] = (w, ws, rd)
                bad = sum(p.bad for p in passes)
                last = passes[-1]
                print(
                    f"{name:<18}{w:>11.2f}{ws:>11.2f}{rd:>11.2f}"
                    f"{last.disk_bytes / total:>14.3f}{last.files:>7}{bad:>11}"
                )
                if bad:
                    failed = True
                    print(f"!!! {name} RETURNED WRONG OR MISSING DATA for {bad} chunk reads")
            a = rates["atom-tier"]
            for name in arms:
                if name != "atom-tier":
                    b = rates[name]
                    print(
                        f"atom-tier / {name}: write {a[0] / b[0]:.2f}x, "
                        f"write+sync {a[1] / b[1]:.2f}x, read {a[2] / b[2]:.2f}x"
                    )
            if raw:
                raw_w = statistics.median(w for w, _ in raw)
                raw_r = statistics.median(r for _, r in raw)
                print(
                    f"raw O_DIRECT files, 8 threads: write {raw_w:.2f}, read {raw_r:.2f} GB/s "
                    f"(atom-tier {a[0] / raw_w:.2f}x, {a[2] / raw_r:.2f}x; LMCache read / raw "
                    f"{rates['LMCache'][2] / raw_r:.2f}x)"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
