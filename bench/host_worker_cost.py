"""Fixed cost of one DRAM-tier transfer through atom-tier's CPU host-copy worker.

Small pages (1 KiB per layer-block) so that the figure is the worker's own work per transfer
(planning the copies and one call per copy), not memory bandwidth; `connector_bandwidth.py`
measures the bandwidth. The KV cache and the DRAM region are laid out as on a CPU server: all
layers in one allocation on each side. Chunk ids are consecutive (long runs) or every other
one (one run per chunk, as after the DRAM tier has evicted and reused chunks for a while).

    .venv/bin/python bench/host_worker_cost.py [--repeat 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from three_arms_setup import machine
from vllm.v1.kv_offload.base import (
    CanonicalKVCacheRef,
    CanonicalKVCaches,
    CanonicalKVCacheTensor,
    GPULoadStoreSpec,
)
from vllm.v1.kv_offload.cpu.common import CPULoadStoreSpec

from atom_tier.connector.host_worker import HostCopyWorker

PAGE, DEVICE_BLOCKS, BLOCKS_PER_CHUNK = 1024, 512, 2
# (layers, device blocks per transfer): a short prompt on a small model ... a long one on a
# 32-layer model (CPU blocks are 128 tokens: 100 blocks = 12,800 tokens).
CASES = [(2, 4), (4, 16), (4, 100), (32, 16), (32, 100)]


def store_cost_us(layers: int, blocks: int, consecutive: bool, repeat: int) -> float:
    backing = torch.zeros((DEVICE_BLOCKS, layers, PAGE), dtype=torch.int8)
    caches = CanonicalKVCaches(
        [CanonicalKVCacheTensor(backing[:, i], PAGE) for i in range(layers)],
        [[CanonicalKVCacheRef(i, PAGE) for i in range(layers)]],
    )
    chunks_needed = -(-blocks // BLOCKS_PER_CHUNK)
    rows = torch.zeros((2 * chunks_needed + 4, layers, PAGE * BLOCKS_PER_CHUNK), dtype=torch.int8)
    worker = HostCopyWorker(caches, [rows[:, i] for i in range(layers)], BLOCKS_PER_CHUNK)
    step = 1 if consecutive else 2
    chunk_ids = list(range(1, 1 + step * chunks_needed, step))
    device_ids = list(range(10, 10 + blocks))
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for job in range(repeat):
            worker.submit_store(
                job, GPULoadStoreSpec(device_ids, [blocks], [0]), CPULoadStoreSpec(chunk_ids)
            )
            worker.get_finished()
        rounds.append((time.perf_counter() - started) / repeat * 1e6)
    worker.shutdown()
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2000, help="stores per timed round")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"pages {PAGE} B, {BLOCKS_PER_CHUNK} blocks per chunk; median of 5 rounds")
    print("| layers | blocks | chunks | us per store |")
    print("|---|---|---|---|")
    for layers, blocks in CASES:
        for consecutive in (True, False):
            repeat = max(50, args.repeat * 4 // max(4, blocks * layers // 8))
            cost = store_cost_us(layers, blocks, consecutive, repeat)
            kind = "consecutive" if consecutive else "every other"
            print(f"| {layers} | {blocks} | {kind} | {cost:.1f} |")


if __name__ == "__main__":
    main()
