"""Disk benchmark of atom-tier's NVMe tier, side by side on one filesystem in one run.

Measured (GB/s = 1e9 bytes/s, median of --repeat passes, interleaved so noise is shared):

* raw dd-like   one file, 4 MiB O_DIRECT blocks, one thread (what `dd oflag=direct` does)
* raw files     one O_DIRECT file per chunk, --threads threads: the best a per-chunk-file
                store can do here
* atom-tier     AtomTierNvmeTier (direct engine, and the buffered aiofile engine) driven
                through vLLM 0.32's secondary-tier contract: TransferJobs of --job-chunks
                chunks, --inflight jobs in flight, completion polled as the scheduler does
* vLLM fs       vLLM's FileSystemTierManager, same chunks, same jobs, same primary buffer

Cached file data is dropped before every read pass when this runs as root (buffered readers
would otherwise read memory; directories and inodes stay cached, as in a serving tier). Also
times the index rebuild of a restart (--rebuild-files chunks).

    .venv/bin/python bench/nvme_tier.py --dir /mnt/nvme/bench [--chunk-mib 2 16]
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MIB = 2**20
O_DIRECT = os.O_DIRECT


def drop_caches(level: int = 1) -> bool:
    """1: data pages only. Buffered readers must not read memory, but a serving tier keeps its
    directories and inodes cached, so those stay; 3 drops them too (a cold restart)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text(f"{level}\n")
        return True
    except OSError:
        return False


def machine(directory: Path) -> dict[str, str]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        platform.processor(),
    )
    mem = next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    mounts = [line.split() for line in open("/proc/mounts")]
    best = max(
        (m for m in mounts if str(directory.resolve()).startswith(m[1])), key=lambda m: len(m[1])
    )
    model = ""
    dev = os.path.basename(best[0])
    with contextlib.suppress(OSError):
        model = Path(f"/sys/block/{dev}/device/model").read_text().strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": f"{cpu} x {os.cpu_count()}",
        "memory": f"{int(mem) / 2**20:.1f} GiB",
        "kernel": platform.release(),
        "filesystem": f"{best[2]} on {best[0]} {model}".strip(),
        "python": platform.python_version(),
    }


def aligned(size: int, fill: bool = True) -> mmap.mmap:
    buf = mmap.mmap(-1, size)
    if fill:
        buf[:] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    return buf


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- raw baselines ----------------------------------------------------------------------
def raw_dd(work: Path, total: int) -> tuple[float, float]:
    block = aligned(4 * MIB)
    path = work / "dd.bin"

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_DIRECT, 0o644)
        for offset in range(0, total, len(block)):
            os.pwrite(fd, block, offset)
        os.close(fd)

    def read() -> None:
        fd = os.open(path, os.O_RDONLY | O_DIRECT)
        for offset in range(0, total, len(block)):
            os.preadv(fd, [block], offset)
        os.close(fd)

    w = timed(write)
    drop_caches()
    r = timed(read)
    path.unlink()
    return total / w / 1e9, total / r / 1e9


def raw_files(work: Path, chunks: int, chunk: int, threads: int) -> tuple[float, float]:
    from concurrent.futures import ThreadPoolExecutor

    folder = work / "raw"
    folder.mkdir()
    src = aligned(chunk)
    dst = [aligned(chunk, fill=False) for _ in range(threads)]

    def write_one(i: int) -> None:
        fd = os.open(folder / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_DIRECT, 0o644)
        os.pwrite(fd, src, 0)
        os.close(fd)

    def read_one(i: int) -> None:
        fd = os.open(folder / str(i), os.O_RDONLY | O_DIRECT)
        os.preadv(fd, [dst[i % threads]], 0)
        os.close(fd)

    with ThreadPoolExecutor(threads) as pool:
        w = timed(lambda: list(pool.map(write_one, range(chunks))))
        drop_caches()
        r = timed(lambda: list(pool.map(read_one, range(chunks))))
    shutil.rmtree(folder)
    return chunks * chunk / w / 1e9, chunks * chunk / r / 1e9


# -- tiers through vLLM's secondary-tier contract ---------------------------------------------
def make_spec(chunk: int) -> Any:
    from vllm.v1.kv_offload.config import (
        OffloadingCacheConfig,
        OffloadingConfig,
        OffloadingGroupConfig,
        OffloadingModelConfig,
        OffloadingParallelConfig,
    )
    from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec

    config = OffloadingConfig(
        groups=(OffloadingGroupConfig(256, ("layers",), 0),),
        worker_kv_bytes_per_block=chunk,
        enable_kv_cache_events=False,
        extra_config={"cpu_bytes_to_use": chunk},
        engine_id=f"bench-{uuid.uuid4().hex[:8]}",
        model=OffloadingModelConfig("bench-model", "bfloat16"),
        cache=OffloadingCacheConfig(tokens_per_hash=256, blocks_per_chunk=1),
        parallel=OffloadingParallelConfig(0, 1, 1, 1, 1, 1, 0, 1, None, True),
    )
    return TieringOffloadingSpec(config)


def tier_config(kind: str, root: Path, capacity: int) -> dict[str, Any]:
    if kind == "fs":
        return {"type": "fs", "root_dir": str(root)}
    engine = "direct" if kind == "atom-tier" else "aiofile"
    return {
        "type": "AtomTierNvmeTier",
        "module_path": "atom_tier.tiers.vllm_tier",
        "root_dir": str(root),
        "capacity_bytes": capacity,
        "engine": engine,
    }


def run_jobs(tier: Any, jobs: list[Any], inflight: int, submit: str) -> None:
    pending: set[int] = set()
    failed = 0
    queue = list(jobs)
    while queue or pending:
        while queue and len(pending) < inflight:
            job = queue.pop(0)
            getattr(tier, submit)(job)
            pending.add(job.job_id)
        done = list(tier.get_finished_jobs())
        for result in done:
            pending.discard(result.job_id)
            failed += not result.success
        if not done:
            time.sleep(0.0002)
    if failed:
        raise RuntimeError(f"{failed} {submit} jobs failed")


def tier_pass(kind: str, work: Path, chunks: int, chunk: int, job: int, inflight: int) -> Any:
    from vllm.v1.kv_offload.base import ReqContext, make_offload_key
    from vllm.v1.kv_offload.tiering.base import TransferJob
    from vllm.v1.kv_offload.tiering.factory import SecondaryTierFactory

    slots = 2 * job * inflight  # first half: sources of stores, second half: load targets
    region = aligned(slots * chunk)
    view = memoryview(np.frombuffer(region, dtype=np.int8).reshape(slots, chunk))
    root = work / kind
    capacity = 2 * chunks * (chunk + 4096)
    tier = SecondaryTierFactory.create_secondary_tier(
        tier_config(kind, root, capacity), view, make_spec(chunk)
    )
    store = getattr(tier, "store", None)
    if store is not None:
        assert store.wait_ready(60), store.unavailable_reason
    req = ReqContext(req_id="bench")
    keys = [make_offload_key(uuid.uuid4().bytes * 2, 0) for _ in range(chunks)]

    def jobs(promotion: bool) -> list[Any]:
        out = []
        for n, first in enumerate(range(0, chunks, job)):
            base = (job * (n % inflight)) + (slots // 2 if promotion else 0)
            batch = keys[first : first + job]
            ids = np.arange(base, base + len(batch), dtype=np.int32)
            out.append(TransferJob(n, batch, ids, promotion, req))
        return out

    w = timed(lambda: run_jobs(tier, jobs(False), inflight, "submit_store"))
    drop_caches()
    r = timed(lambda: run_jobs(tier, jobs(True), inflight, "submit_load"))
    rebuild = None
    tier.shutdown()
    if store is not None:  # restart: time the index rebuild of what this pass wrote
        tier = SecondaryTierFactory.create_secondary_tier(
            tier_config(kind, root, capacity), view, make_spec(chunk)
        )
        tier.store.wait_ready(60)
        rebuild = tier.store.stats()["rebuild_seconds"]
        tier.shutdown()
    del view
    shutil.rmtree(root)
    return chunks * chunk / w / 1e9, chunks * chunk / r / 1e9, rebuild


def rebuild_scaling(work: Path, files: int) -> tuple[int, float]:
    from atom_tier.tiers.nvme_store import NvmeChunkStore

    root = work / "rebuild"
    store = NvmeChunkStore(root, files * 2 * 4096, namespace=b"bench")
    store.wait_ready(60)
    payload = memoryview(bytes(4096))
    for first in range(0, files, 256):
        store.submit_writes(
            [(b"%d" % i, payload) for i in range(first, min(files, first + 256))]
        ).result()
    store.close()
    drop_caches(3)  # a cold restart: metadata too
    again = NvmeChunkStore(root, files * 2 * 4096, namespace=b"bench")
    again.wait_ready(600)
    stats = again.stats()
    again.close()
    shutil.rmtree(root)
    return int(stats["rebuild_chunks"]), stats["rebuild_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: /tmp)")
    parser.add_argument("--chunk-mib", type=float, nargs="+", default=[2.0, 16.0])
    parser.add_argument("--total-mib", type=int, default=1024, help="bytes per pass")
    parser.add_argument("--job-chunks", type=int, default=8)
    parser.add_argument("--inflight", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8, help="threads of the raw-files pass")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rebuild-files", type=int, default=20000)
    args = parser.parse_args()
    base = args.dir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="atom-tier-bench-", dir=base))
    try:
        for key, value in machine(work).items():
            print(f"{key:>10}: {value}")
        print(f"{'caches':>10}: {'dropped before reads' if drop_caches() else 'NOT dropped'}")
        for chunk_mib in args.chunk_mib:
            chunk = int(chunk_mib * MIB) // 4096 * 4096
            chunks = max(args.inflight * args.job_chunks, args.total_mib * MIB // chunk)
            results: dict[str, list[tuple[float, float]]] = {}
            rebuilds: list[float] = []
            for _ in range(args.repeat):
                results.setdefault("raw dd-like", []).append(raw_dd(work, chunks * chunk))
                results.setdefault("raw files", []).append(
                    raw_files(work, chunks, chunk, args.threads)
                )
                for kind in ("atom-tier", "atom-tier aiofile", "vLLM fs"):
                    name = "fs" if kind == "vLLM fs" else kind
                    w, r, rebuild = tier_pass(
                        name, work, chunks, chunk, args.job_chunks, args.inflight
                    )
                    results.setdefault(kind, []).append((w, r))
                    if rebuild is not None and kind == "atom-tier":
                        rebuilds.append(rebuild)
            print(
                f"\nchunk {chunk / MIB:g} MiB x {chunks} ({chunks * chunk / MIB:.0f} MiB/pass), "
                f"jobs of {args.job_chunks}, {args.inflight} in flight, median of {args.repeat}"
            )
            raw_read = statistics.median(r for _, r in results["raw dd-like"])
            print(f"{'':<20}{'write GB/s':>11}{'read GB/s':>11}{'read/raw dd':>13}")
            for kind, runs in results.items():
                w = statistics.median(x for x, _ in runs)
                r = statistics.median(y for _, y in runs)
                print(f"{kind:<20}{w:>11.2f}{r:>11.2f}{r / raw_read:>13.2f}")
            fs_read = statistics.median(y for _, y in results["vLLM fs"])
            atom_read = statistics.median(y for _, y in results["atom-tier"])
            fs_write = statistics.median(x for x, _ in results["vLLM fs"])
            atom_write = statistics.median(x for x, _ in results["atom-tier"])
            print(
                f"atom-tier / vLLM fs: read {atom_read / fs_read:.2f}x, "
                f"write {atom_write / fs_write:.2f}x; index rebuild of {chunks} chunks "
                f"{statistics.median(rebuilds) * 1000:.1f} ms"
            )
        if args.rebuild_files:
            found, seconds = rebuild_scaling(work, args.rebuild_files)
            print(
                f"\nindex rebuild at a cold restart (all caches dropped): {found} chunks in "
                f"{seconds:.2f} s ({seconds / max(found, 1) * 1e6:.0f} us per chunk)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["sync"], check=False)


if __name__ == "__main__":
    main()
