"""Cost of the weights fingerprint that goes into every persistent tier's namespace.

Writes safetensors checkpoints of a chosen size and tensor count on a real filesystem, then
times :func:`atom_tier.tiers.model_identity.weights_fingerprint` on them:

* ``dense``: real bytes on disk. "cold" drops the files from the page cache first
  (``posix_fadvise(DONTNEED)`` after ``fsync``), so every window is a device read; "warm"
  is the same call again.
* ``sparse``: files of the full size whose tensor data are holes (``truncate``), with as
  many tensors as a large MoE checkpoint. Reading a hole costs no device I/O, so this shows
  the per-window cost (syscalls, hashing, Python) at that tensor count, not the disk's.

Usage: python bench/model_identity.py [--dir DIR] [--dense-gib 16] [--dense-tensors 2000]
       [--sparse-gib 200] [--sparse-tensors 91000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import tempfile
from pathlib import Path

from nvme_tier import machine

from atom_tier.tiers.model_identity import weights_fingerprint

GIB = 2**30
SHARD_BYTES = 4 * GIB
FILL = os.urandom(64 * 2**20)


def write_checkpoint(root: Path, total: int, tensors: int, *, sparse: bool) -> None:
    """Shards of at most SHARD_BYTES holding ``tensors`` equal BF16 tensors in all."""
    root.mkdir(parents=True)
    per_tensor = max(2, total // tensors) // 2 * 2
    shards = max(1, -(-total // SHARD_BYTES))
    per_shard = -(-tensors // shards)
    made = 0
    for shard in range(shards):
        count = min(per_shard, tensors - made)
        header = {
            f"model.layers.{made + i}.weight": {
                "dtype": "BF16",
                "shape": [per_tensor // 2],
                "data_offsets": [i * per_tensor, (i + 1) * per_tensor],
            }
            for i in range(count)
        }
        made += count
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        data_bytes = count * per_tensor
        path = root / f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            if sparse:
                f.truncate(8 + len(raw) + data_bytes)
                continue
            left = data_bytes
            while left:
                piece = FILL[: min(left, len(FILL))]
                f.write(piece)
                left -= len(piece)
            f.flush()
            os.fsync(f.fileno())
    (root / "config.json").write_text('{"model_type": "bench"}')


def drop_from_page_cache(root: Path) -> None:
    for path in root.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(root: Path, repeat: int, cold: bool) -> tuple[list[float], int, int]:
    times, windows, read = [], 0, 0
    for _ in range(repeat):
        if cold:
            drop_from_page_cache(root)
        identity = weights_fingerprint(root)
        times.append(identity.seconds)
        windows, read = identity.windows, identity.bytes_read
    return times, windows, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--dense-gib", type=float, default=16)
    parser.add_argument("--dense-tensors", type=int, default=2000)
    parser.add_argument("--sparse-gib", type=float, default=200)
    parser.add_argument("--sparse-tensors", type=int, default=91000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="atom-tier-identity-", dir=args.dir))
    try:
        for key, value in machine(work).items():
            print(f"{key:10} {value}")
        print(
            f"\n{'layout':8} {'GiB':>6} {'tensors':>8} {'windows':>8} {'MiB read':>9} "
            f"{'mode':>5} {'median s':>9} {'max s':>7}"
        )
        for layout, gib, tensors in (
            ("dense", args.dense_gib, args.dense_tensors),
            ("sparse", args.sparse_gib, args.sparse_tensors),
        ):
            root = work / layout
            write_checkpoint(root, int(gib * GIB), tensors, sparse=layout == "sparse")
            modes = (("cold", True), ("warm", False)) if layout == "dense" else (("holes", False),)
            for mode, cold in modes:
                times, windows, read = measure(root, args.repeat, cold)
                print(
                    f"{layout:8} {gib:6.0f} {tensors:8d} {windows:8d} {read / 2**20:9.1f} "
                    f"{mode:>5} {statistics.median(times):9.3f} {max(times):7.3f}"
                )
            shutil.rmtree(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
