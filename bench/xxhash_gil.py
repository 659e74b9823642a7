"""Does XXH3 (python-xxhash) release the GIL while it hashes? The NVMe tier's hash lanes
(atom_tier/tiers/hash_lane.py) count on it to hash beside its I/O threads.

Two measurements on one buffer:

* a pure-Python counter thread runs while the main thread makes single hash calls of
  --mib MiB each: with the GIL held for the call the counter would not move at all during
  it; its rate during the calls is printed next to its rate alone;
* 1 thread hashing vs 2 threads hashing at once (GB/s in total): near 2x where two cores
  are free, flat if the GIL serialised them (on a loaded machine the gain is smaller).

    .venv/bin/python bench/xxhash_gil.py [--mib 64] [--calls 10]
"""

from __future__ import annotations

import argparse
import mmap
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import xxhash
from nvme_tier import machine

from atom_tier.tiers.chunk_format import payload_hasher


def counter_rate(seconds: float | None, work: Callable[[], None] | None = None) -> float:
    """Iterations per second of a Python counting loop, alone (``seconds``) or while
    ``work()`` runs on this thread."""
    count = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1

    thread = threading.Thread(target=spin)
    thread.start()
    time.sleep(0.05)
    start, before = time.perf_counter(), count[0]
    if seconds is not None:
        time.sleep(seconds)
    else:
        assert work is not None
        work()
    elapsed, counted = time.perf_counter() - start, count[0] - before
    stop.set()
    thread.join()
    return counted / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    for key, value in machine(Path(__file__).parent).items():
        print(f"{key}: {value}")
    size = args.mib << 20
    buf = mmap.mmap(-1, size)
    buf[:] = os.urandom(1 << 20) * args.mib
    view = memoryview(buf)
    gil_minsize = getattr(xxhash._xxhash, "_GIL_MINSIZE", "not exposed")
    print(f"xxhash {xxhash.VERSION}, GIL released from {gil_minsize} bytes on")
    print(f"load average {os.getloadavg()[0]:.1f} at the start")

    def hash_calls() -> None:
        for _ in range(args.calls):
            payload_hasher().update(view)

    alone = counter_rate(1.0)
    during = counter_rate(None, hash_calls)
    print(f"counter thread: {alone:,.0f}/s alone, {during:,.0f}/s during {args.mib} MiB hash calls")
    for threads in (1, 2):
        workers = [threading.Thread(target=hash_calls) for _ in range(threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        seconds = time.perf_counter() - start
        print(
            f"{threads} thread(s) hashing: {threads * args.calls * size / seconds / 1e9:.2f} GB/s"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
