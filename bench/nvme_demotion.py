"""What demotion to the NVMe tier costs in disk writes: write-on-store vs write-on-evict.

Replays kv-cache-tester traces (block hash ids, no text) through a model of the two tiers:
a DRAM tier (LRU, D chunks) in front of an NVMe tier (LRU, N chunks). A request's leading
chunks found in DRAM are hits; found on NVMe they are promoted into DRAM; the rest are
computed and stored into DRAM. The two policies differ only in when NVMe is written:

* write-on-store (what vLLM's tiering contract does, and atom-tier's tier): every chunk
  stored into DRAM is written to NVMe unless NVMe already holds it;
* write-on-evict: a chunk is written to NVMe when DRAM evicts it, unless NVMe holds it.

Reported per configuration: NVMe chunk writes per chunk stored into DRAM (the write
amplification), the hit mix, and the share of the cached chunks that are on NVMe at the end
(what a restart keeps). Chunks are 256 tokens (4 trace blocks of 64), keyed per trace.

    .venv/bin/python bench/nvme_demotion.py --traces /work/shared/traces --limit 80
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from atom_tier.replay.traces import load_traces

BLOCKS_PER_CHUNK = 4  # 256-token chunks (ATOM_TIER_CHUNK_TOKENS default) of 64-token blocks

Key = tuple[str, tuple[int, ...]]


@dataclass
class Outcome:
    stored: int = 0
    nvme_writes: int = 0
    dram_hits: int = 0
    nvme_hits: int = 0
    computed: int = 0
    durable_share: float = 0.0


def request_stream(folder: Path, limit: int | None) -> list[list[Key]]:
    """Chunk keys of every request, all sessions interleaved by their recorded start time."""
    traces = load_traces(folder, limit=limit, seed=0)
    timed: list[tuple[float, int, list[Key]]] = []
    for order, session in enumerate(traces.sessions):
        clock = 0.0
        for index, request in enumerate(session.requests):
            clock += session.think_before(index) if index else 0.0
            ids = request.hash_ids
            full = len(ids) // BLOCKS_PER_CHUNK
            keys = [
                (session.trace_id, tuple(ids[i * BLOCKS_PER_CHUNK : (i + 1) * BLOCKS_PER_CHUNK]))
                for i in range(full)
            ]
            timed.append((clock, order, keys))
    timed.sort(key=lambda item: (item[0], item[1]))
    return [keys for _clock, _order, keys in timed]


def simulate(stream: list[list[Key]], dram_chunks: int, nvme_chunks: int, policy: str) -> Outcome:
    dram: OrderedDict[Key, bool] = OrderedDict()  # value: dirty (not on NVMe)
    nvme: OrderedDict[Key, None] = OrderedDict()
    out = Outcome()
    on_evict = policy == "write-on-evict"

    def nvme_put(key: Key) -> None:
        if key in nvme:
            nvme.move_to_end(key)
            return
        out.nvme_writes += 1
        nvme[key] = None
        if len(nvme) > nvme_chunks:
            gone, _ = nvme.popitem(last=False)
            if gone in dram:
                dram[gone] = True  # only DRAM holds it now

    def dram_put(key: Key, dirty: bool) -> None:
        dram[key] = dirty
        if len(dram) > dram_chunks:
            gone, gone_dirty = dram.popitem(last=False)
            if on_evict and gone_dirty:
                nvme_put(gone)

    for keys in stream:
        position = 0
        for key in keys:  # leading hits
            if key in dram:
                dram.move_to_end(key)
                out.dram_hits += 1
            elif key in nvme:
                nvme.move_to_end(key)
                out.nvme_hits += 1
                dram_put(key, dirty=False)  # promoted: a copy of what NVMe holds
            else:
                break
            position += 1
        for key in keys[position:]:  # computed and stored into DRAM
            out.computed += 1
            if key in dram:
                dram.move_to_end(key)
                continue
            out.stored += 1
            if on_evict:
                dram_put(key, dirty=key not in nvme)
            else:
                nvme_put(key)
                dram_put(key, dirty=False)
    cached = set(dram) | set(nvme)
    out.durable_share = len(set(nvme)) / max(len(cached), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--traces", type=Path, default=Path("/work/shared/traces"))
    parser.add_argument("--limit", type=int, default=80, help="traces drawn (seed 0)")
    parser.add_argument("--dram-share", type=float, nargs="+", default=[0.02, 0.1, 0.3])
    parser.add_argument("--nvme-share", type=float, nargs="+", default=[0.25, 1.0])
    args = parser.parse_args()
    start = time.monotonic()
    stream = request_stream(args.traces, args.limit)
    unique = len({key for keys in stream for key in keys})
    total = sum(len(keys) for keys in stream)
    print(
        f"{args.limit} traces, {len(stream)} requests, {total} chunk lookups, {unique} unique "
        f"chunks of 256 tokens"
    )
    print(
        f"{'DRAM':>6}{'NVMe':>6}  {'policy':<15}{'stored':>9}{'NVMe writes':>12}"
        f"{'writes/stored':>14}{'DRAM hits':>10}{'NVMe hits':>10}{'on NVMe at end':>15}"
    )
    for dram_share in args.dram_share:
        for nvme_share in args.nvme_share:
            dram_chunks = max(1, int(unique * dram_share))
            nvme_chunks = max(1, int(unique * nvme_share))
            for policy in ("write-on-store", "write-on-evict"):
                o = simulate(stream, dram_chunks, nvme_chunks, policy)
                print(
                    f"{dram_share:>6.0%}{nvme_share:>6.0%}  {policy:<15}{o.stored:>9}"
                    f"{o.nvme_writes:>12}{o.nvme_writes / max(o.stored, 1):>14.2f}"
                    f"{o.dram_hits / total:>10.1%}{o.nvme_hits / total:>10.1%}"
                    f"{o.durable_share:>15.1%}"
                )
    print(f"(DRAM/NVMe sizes as a share of the unique chunks; {time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
