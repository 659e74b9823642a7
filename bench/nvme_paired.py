"""atom-tier's NVMe tier against vLLM's fs tier in paired passes, with and without checksums.

Each pass runs the same write-then-read of ``--total-mib`` through every arm, back to back
(order reversed every other pass), and the figures are the per-pass ratios to vLLM's fs tier:
on a virtual disk whose speed drifts by 20-30% from minute to minute, a ratio taken inside one
pass is steadier than a ratio of medians taken over a whole run. Arms:

* ``atom-tier``          the tier as shipped (XXH3 of every payload on write and on read);
* ``atom-tier no-hash``  the same with the payload checksum replaced by a constant, an
                         experiment only (the tier must never run without it): what is left
                         is the cost of the tier's I/O path itself;
* ``vLLM fs``            vLLM 0.32's fs tier (its C extension, no checksum);
* ``raw dd``             the filesystem's raw O_DIRECT throughput: one file, 4 MiB blocks, one
                         thread (what ``dd oflag=direct`` does), no header, no checksum;
* ``raw files``          one O_DIRECT file per chunk, 8 threads, no header, no checksum: the
                         best a store of one file per chunk can do here.

Besides the ratios to vLLM fs, atom-tier's per-pass ratios to the two raw arms are printed.

Jobs, buffers, cache dropping: ``bench/nvme_tier.py``'s ``tier_pass`` (run as root).

    .venv/bin/python bench/nvme_paired.py [--chunk-mib 0.125 2 16] [--total-mib 1024]
        [--passes 11] [--dir DIR] [--arms ARM ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nvme_tier import MIB, machine, raw_dd, raw_files, tier_pass

from atom_tier.tiers import chunk_format

ARMS = ("atom-tier", "atom-tier no-hash", "vLLM fs", "raw dd", "raw files")
RAW_ARMS = ("raw dd", "raw files")


class _NoHash:
    """A payload hasher that hashes nothing (the no-hash arm's)."""

    def update(self, data: object, /) -> None:
        return

    def intdigest(self) -> int:
        return 0


@contextmanager
def checksums_replaced(active: bool) -> Iterator[None]:
    saved: dict[chunk_format.ChecksumKind, Callable[..., int]] = dict(chunk_format._CHECKSUMS)
    saved_hashers = dict(getattr(chunk_format, "_HASHERS", {}))  # none before the lanes
    if active:
        for kind in chunk_format._CHECKSUMS:
            chunk_format._CHECKSUMS[kind] = lambda payload: 0
            if saved_hashers:
                chunk_format._HASHERS[kind] = _NoHash
    try:
        yield
    finally:
        chunk_format._CHECKSUMS.update(saved)
        if saved_hashers:
            chunk_format._HASHERS.update(saved_hashers)


def one_pass(arm: str, parent: Path, chunk: int, total: int) -> tuple[float, float]:
    work = Path(tempfile.mkdtemp(prefix="paired-", dir=parent))
    try:
        if arm == "raw dd":
            return raw_dd(work, total)
        if arm == "raw files":
            return raw_files(work, total // chunk, chunk, 8)
        with checksums_replaced(arm == "atom-tier no-hash"):
            write, read, _ = tier_pass(
                "fs" if arm == "vLLM fs" else "atom-tier", work, total // chunk, chunk, 8, 4
            )
        return write, read
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunk-mib", type=float, nargs="+", default=[0.125, 2.0, 16.0])
    parser.add_argument("--total-mib", type=int, default=1024)
    parser.add_argument("--passes", type=int, default=11)
    parser.add_argument("--dir", type=Path, default=None, help="a folder on the disk to test")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    args = parser.parse_args()
    arms = [arm for arm in ARMS if arm in args.arms or arm in ("atom-tier", "vLLM fs")]
    parent = args.dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    for key, value in machine(parent).items():
        print(f"{key}: {value}")
    print(f"folder: {parent}; {args.total_mib} MiB per pass, {args.passes} passes, jobs of 8")
    print(f"load average {os.getloadavg()[0]:.1f} at the start")
    print("| chunk | arm | write GB/s (median) | read GB/s (median) "
          "| write / fs (median of passes) | read / fs (median of passes) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for chunk_mib in args.chunk_mib:
        chunk = int(chunk_mib * MIB)
        total = args.total_mib * MIB // chunk * chunk
        figures: dict[str, list[tuple[float, float]]] = {arm: [] for arm in arms}
        for index in range(args.passes):
            for arm in arms if index % 2 == 0 else arms[::-1]:
                figures[arm].append(one_pass(arm, parent, chunk, total))
        fs = figures["vLLM fs"]
        for arm in arms:
            runs = figures[arm]
            write = statistics.median(w for w, _ in runs)
            read = statistics.median(r for _, r in runs)
            write_ratio = statistics.median(a[0] / b[0] for a, b in zip(runs, fs, strict=True))
            read_ratio = statistics.median(a[1] / b[1] for a, b in zip(runs, fs, strict=True))
            print(f"| {chunk_mib:g} MiB | {arm} | {write:.2f} | {read:.2f} "
                  f"| {write_ratio:.2f}x | {read_ratio:.2f}x |")  # fmt: skip
        atom = figures["atom-tier"]
        for raw in (arm for arm in arms if arm in RAW_ARMS):
            base = figures[raw]
            write_ratio = statistics.median(a[0] / b[0] for a, b in zip(atom, base, strict=True))
            read_ratio = statistics.median(a[1] / b[1] for a, b in zip(atom, base, strict=True))
            print(f"| {chunk_mib:g} MiB | atom-tier / {raw} | | "
                  f"| {write_ratio:.2f}x | {read_ratio:.2f}x |")  # fmt: skip
        print(f"| | load average {os.getloadavg()[0]:.1f} | | | | |")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
