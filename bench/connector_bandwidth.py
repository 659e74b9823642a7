"""DRAM tier bandwidth through atom-tier's host-copy worker vs a plain host memory copy.

Stores (KV cache -> DRAM tier) and loads (DRAM tier -> KV cache) go through the real
``HostCopyWorker`` into a real shared region in /dev/shm, with the KV cache laid out as vLLM's
CPU backend lays it out (per layer ``(blocks, kv_heads, block_size, 2 * head_size)``, all layers
in one allocation). The reference is ``Tensor.copy_`` of the same number of bytes between two
contiguous host buffers, measured in the same run: the faster of one ``Tensor.copy_`` (torch's
OpenMP threads) and one ``np.copyto`` (a single memcpy). Goal: worker >= 0.8 x plain copy.

The same bytes copied in pieces of one layer-block page are shown too: the worker cannot copy
less than a page at a time, and glibc's memcpy switches to non-temporal stores only above
``glibc.cpu.x86_non_temporal_threshold`` (3/4 of the L3 share; 190 MiB on the 480 MiB-L3 dev
VM), which a single huge copy crosses and page-size pieces do not. Run once more with
``GLIBC_TUNABLES=glibc.cpu.x86_non_temporal_threshold=0x40000`` to see that effect.

    .venv/bin/python bench/connector_bandwidth.py [--layers 8 --kv-heads 8 --head-size 128
        --block-size 128 --blocks 256 --blocks-per-chunk 2 --repeats 7]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable

import numpy as np
import torch
from vllm.v1.kv_offload.base import (
    CanonicalKVCacheRef,
    CanonicalKVCaches,
    CanonicalKVCacheTensor,
    GPULoadStoreSpec,
)
from vllm.v1.kv_offload.cpu.common import CPULoadStoreSpec

from atom_tier.connector.host_worker import HostCopyWorker
from atom_tier.connector.region import AtomTierSharedRegion

GIB = 1024**3


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return (
        f"{model}, {os.cpu_count()} logical CPUs, {mem:.1f} GiB RAM, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), {platform.platform()}"
    )


def median_seconds(actions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each action. Rounds interleave the actions so that load from other
    processes on a shared host hits all of them alike."""
    for action in actions.values():
        action()  # warm-up: first touch of every page
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(repeats):
        for name, action in actions.items():
            start = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-size", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument(
        "--blocks", type=int, default=256, help="blocks per transfer (default 1 GiB: more than L3)"
    )
    parser.add_argument("--blocks-per-chunk", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    bpc, blocks = args.blocks_per_chunk, args.blocks
    page = args.kv_heads * args.block_size * 2 * args.head_size * 2  # bf16 bytes
    num_device_blocks = blocks + blocks // 4  # scattered transfers pick among these
    shape = (num_device_blocks, args.kv_heads, args.block_size, 2 * args.head_size)
    backing = torch.randn((args.layers, *shape), dtype=torch.float32).to(torch.bfloat16)
    layers = [backing[i] for i in range(args.layers)]
    caches = CanonicalKVCaches(
        [
            CanonicalKVCacheTensor(t.view(torch.int8).view(num_device_blocks, page), page)
            for t in layers
        ],
        [[CanonicalKVCacheRef(i, page) for i in range(args.layers)]],
    )
    num_chunks = -(-blocks // bpc)
    row = args.layers * page * bpc
    row_aligned = -(-row // 4096) * 4096
    engine = f"atom-tier-bench-{uuid.uuid4().hex}"
    region = AtomTierSharedRegion(
        engine_id=engine,
        num_chunks=num_chunks,
        rank=0,
        kv_bytes_per_chunk=row_aligned,
        cpu_page_size=row,
    )
    views = [region.create_next_worker_view(page * bpc) for _ in layers]
    worker = HostCopyWorker(caches, views, bpc, release=region.cleanup)
    del views
    chunk_ids = list(range(num_chunks))
    total = blocks * args.layers * page

    def store(device_blocks: list[int]) -> Callable[[], object]:
        spec = GPULoadStoreSpec(device_blocks, group_sizes=[blocks], block_indices=[0])
        return lambda: worker.submit_store(0, spec, CPULoadStoreSpec(chunk_ids))

    def load(device_blocks: list[int]) -> Callable[[], object]:
        spec = GPULoadStoreSpec(device_blocks, group_sizes=[blocks], block_indices=[0])
        return lambda: worker.submit_load(0, CPULoadStoreSpec(chunk_ids), spec)

    contiguous = list(range(blocks))
    scattered = [int(b) for b in np.random.default_rng(0).permutation(num_device_blocks)[:blocks]]
    source = torch.empty(total, dtype=torch.int8).random_(-128, 127)
    target = torch.empty(total, dtype=torch.int8).zero_()

    print(f"machine: {machine()}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"GLIBC_TUNABLES: {os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    print(
        f"shape: {args.layers} layers x {args.kv_heads} KV heads x head {args.head_size} x "
        f"block {args.block_size} tokens (bf16, {page / 1024:.0f} KiB per layer-block); "
        f"{blocks} blocks = {total / GIB * 1024:.0f} MiB per transfer, "
        f"{bpc} blocks per chunk; median of {args.repeats} interleaved rounds"
    )
    source_np, target_np = source.numpy(), target.numpy()
    source_pages, target_pages = source_np.reshape(-1, page), target_np.reshape(-1, page)

    def page_pieces() -> None:
        for i in range(source_pages.shape[0]):
            np.copyto(target_pages[i], source_pages[i])

    actions: dict[str, Callable[[], object]] = {
        "plain host copy (Tensor.copy_)": lambda: target.copy_(source),
        "plain host copy (np.copyto)": lambda: np.copyto(target_np, source_np),
        "plain copy in page-size pieces": page_pieces,
        "worker store, contiguous blocks": store(contiguous),
        "worker load, contiguous blocks": load(contiguous),
        "worker store, scattered blocks": store(scattered),
        "worker load, scattered blocks": load(scattered),
    }
    rates = {name: total / sec / GIB for name, sec in median_seconds(actions, args.repeats).items()}
    worker.get_finished()
    reference = max((n for n in rates if n.startswith("plain host")), key=rates.__getitem__)
    for name, rate in rates.items():
        label = name + (" = reference" if name == reference else "")
        print(f"{label:44s} {rate:7.2f} GiB/s   {rate / rates[reference]:4.2f} x copy")
    worker.shutdown()


if __name__ == "__main__":
    main()
