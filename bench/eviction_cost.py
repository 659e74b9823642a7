"""Cost of the sticky DRAM policy against vLLM's LRU policy at 1M resident chunks, same run.

    .venv/bin/python bench/eviction_cost.py [--chunks 1000000 --requests 2000]

Both policies are vLLM ``CachePolicy`` objects, driven as vLLM's CPU offloading manager drives
them: a full tier of ``--chunks`` ready chunks, then requests of 64 chunks (32 looked up and
reused from the tier, 32 new ones stored, which evicts 32), each ending with the request's
recency update. Prints microseconds per lookup (``get``), per evicted chunk, per key of the
recency update, and (in a separate pass, tracemalloc) the Python heap per resident chunk of a
freshly filled tier (the policy's structures, keys and ChunkStatus objects included) and per
entry of sticky's ghost list (at most one per chunk of capacity: evicted keys only).
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from collections import OrderedDict
from typing import Any

from three_arms_setup import machine
from vllm.v1.kv_offload.base import ReqContext, make_offload_key
from vllm.v1.kv_offload.cpu.policies.base import CachePolicy, ChunkStatus
from vllm.v1.kv_offload.cpu.policies.lru import LRUCachePolicy

from atom_tier.tiers.vllm_eviction import StickyCachePolicy

REQUEST_CHUNKS = 64


def _key(i: int) -> Any:
    return make_offload_key(i.to_bytes(32, "big"), 0)


def _fill(policy: CachePolicy, chunks: int) -> None:
    for i in range(chunks):
        chunk = ChunkStatus(i)
        chunk.ref_cnt = 0
        policy.insert(_key(i), chunk)
        policy.mark_evictable(_key(i))


def _bytes_per_chunk(policy_cls: type[CachePolicy], chunks: int) -> float:
    tracemalloc.start()
    policy = policy_cls(chunks)
    _fill(policy, chunks)
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del policy
    return current / chunks


def _ghost_bytes_per_entry(entries: int) -> float:
    tracemalloc.start()
    ghost: OrderedDict[Any, None] = OrderedDict((_key(i), None) for i in range(entries))
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del ghost
    return current / entries


def _run(policy_cls: type[CachePolicy], chunks: int, requests: int) -> dict[str, float]:
    policy = policy_cls(chunks)
    _fill(policy, chunks)
    context = ReqContext(req_id="bench")
    rng = random.Random(0)
    next_key = chunks
    spent = {"get": 0.0, "evict": 0.0, "finish": 0.0}
    counts = {"get": 0, "evict": 0, "finish": 0}
    resident = list(range(chunks))
    for _ in range(requests):
        start = rng.randrange(len(resident) - REQUEST_CHUNKS)
        old = [_key(i) for i in resident[start : start + REQUEST_CHUNKS // 2]]
        new = [_key(next_key + i) for i in range(REQUEST_CHUNKS // 2)]
        begin = time.perf_counter()
        found = [policy.get(k) for k in old]
        spent["get"] += time.perf_counter() - begin
        counts["get"] += len(old)
        if any(c is None for c in found):
            continue  # the range crossed an evicted chunk: not a prefix hit
        policy.on_store_miss(new, context)
        begin = time.perf_counter()
        evicted = policy.evict(len(new), set(old + new))
        spent["evict"] += time.perf_counter() - begin
        assert evicted is not None
        counts["evict"] += len(evicted)
        for offset, key in enumerate(new):
            chunk = ChunkStatus(next_key + offset)
            chunk.ref_cnt = 0
            policy.insert(key, chunk)
            policy.mark_evictable(key)
        next_key += len(new)
        begin = time.perf_counter()
        policy.on_request_finished((tuple(old + new),), set(new), set(old), context)
        spent["finish"] += time.perf_counter() - begin
        counts["finish"] += len(old) + len(new)
    return {name: spent[name] / counts[name] * 1e6 for name in spent}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=2000)
    opts = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{opts.chunks:,} resident chunks, {opts.requests:,} requests of {REQUEST_CHUNKS}")
    print("| policy | get (us/key) | evict (us/chunk) | request update (us/key) | B/chunk |")
    print("|---|---|---|---|---|")
    for policy_cls in (LRUCachePolicy, StickyCachePolicy):
        r = _run(policy_cls, opts.chunks, opts.requests)
        size = _bytes_per_chunk(policy_cls, opts.chunks)
        print(
            f"| {policy_cls.__name__} | {r['get']:.2f} | {r['evict']:.2f} | {r['finish']:.2f} "
            f"| {size:.0f} |",
            flush=True,
        )
    print(f"sticky ghost list: {_ghost_bytes_per_entry(opts.chunks):.0f} B per entry")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
