"""The cache hierarchy, request by request: device prefix cache -> DRAM tier -> NVMe -> shared.

What each request does, mirroring vLLM 0.32 (scheduler, offloading connector, CPU offloading
manager) and atom-tier's NVMe tier:

1. **Device prefix cache** (vLLM's GPU block pool, LRU): the longest cached prefix, at most the
   prompt minus one token, in whole KV blocks. Modelled in chunks, plus the blocks of the
   first missing chunk that are still cached: the previous request's blocks up to where the
   prompt changed, and the warm prefix's blocks past its last whole chunk. Capacity is counted
   in blocks, less the null block; a running request holds its chunks and the blocks of the
   rest of its prompt and output; every covered chunk of the request is cached after it, the
   head of the prompt most recent (vLLM frees a request's blocks tail first).
2. **Connector lookup** from the chunk holding the device hit's end, chunk by chunk until a
   miss: a DRAM hit, or an NVMe / shared hit promoted into DRAM (which fails when DRAM cannot
   make room). The load counts only when it adds at least one chunk of tokens beyond the
   device hit (the connector's rule); the first chunk counts from the device hit's end.
3. **Stores**: with a load, the chunks after the hit; without, every full prompt chunk. Those
   not in DRAM are inserted (one batch: when DRAM cannot make room for all, none is stored, as
   vLLM's ``prepare_store``), and every inserted chunk is written to each secondary tier that
   does not hold it (write-on-store; an NVMe write or read makes the chunk its most recent).
4. **Recency**: the DRAM policy sees every chunk the request loaded or offered, head first.

Left out, because they need a time model: chunks pinned while a transfer or a running request
holds them, and a request that waits for its promotions (the simulator applies each request
at once, in arrival order).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Collection, Container, Sequence
from dataclasses import dataclass, field

from atom_tier.plan.policies import CachePolicy, make_policy
from atom_tier.plan.workload import PlannedRequest, Workload

_NOTHING: frozenset[int] = frozenset()

DEVICE = "device"
DRAM = "dram"
NVME = "nvme"
SHARED = "shared"


@dataclass(frozen=True)
class TierSpec:
    name: str
    chunks: int
    policy: str = "lru"


@dataclass(frozen=True)
class HierarchySpec:
    """Capacities in chunks; secondary tiers are looked up in order after DRAM."""

    dram: TierSpec
    secondaries: tuple[TierSpec, ...] = ()


@dataclass
class TierCounters:
    hit_tokens: int = 0
    inserted: int = 0
    evicted: int = 0
    promotions_failed: int = 0


@dataclass
class SimulationResult:
    """Token counts of one configuration over the whole workload."""

    prompt_tokens: int = 0
    prefill_tokens: int = 0
    tiers: dict[str, TierCounters] = field(default_factory=dict)
    stores_failed: int = 0

    @property
    def hit_tokens(self) -> int:
        return sum(t.hit_tokens for t in self.tiers.values())

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


# vLLM's GPU block pool keeps one block as the null block, never cached
# (vllm/v1/core/block_pool.py ``BlockPool.__init__``: ``self.null_block = ...popleft()``).
NULL_BLOCKS = 1


def _partial_blocks(request: PlannedRequest, found: int, present: Container[int]) -> int:
    """Blocks of chunk ``found`` (the first chunk missing) that still hit: the longest of the
    previous request's blocks in it and the warm prefix's blocks in it that are cached."""
    blocks = 0
    for candidate in (request.partial, request.warm_partial):
        if candidate is not None and candidate[0] == found and candidate[1] > blocks:
            if candidate[2] in present:
                blocks = candidate[1]
    return blocks


def device_hits(workload: Workload, device_chunks: int | None, hold_s: float = 0.0) -> list[int]:
    """Device prefix-cache hit tokens of every request (``device_chunks`` None: infinite).

    The capacity is counted in KV blocks (``device_chunks`` x blocks per chunk, less vLLM's
    null block): a partial chunk's key takes its own blocks, and a session's chunk that
    starts with the warm prefix's blocks takes only the rest (one block per hash, as vLLM's
    block pool caches them).

    A request holds its chunks from its arrival until ``hold_s`` later, as a running request
    holds its KV blocks (vLLM's request inference time; a request waiting in the queue holds
    none, so this is the running part of the request time); only chunks no running request
    holds can be evicted. When
    running requests alone fill the device, nothing else stays cached (vLLM would make the
    request wait; the simulator has no time model for that).
    """
    chunk, block = workload.chunk_tokens, workload.block_tokens
    per_chunk = chunk // block
    capacity = None if device_chunks is None else device_chunks * per_chunk - NULL_BLOCKS
    cached: OrderedDict[int, None] = OrderedDict()  # held by no request, least recent first
    held: dict[int, int] = {}  # chunk -> running requests holding it
    size: dict[int, int] = {}  # blocks of a cached or held key that is not a whole chunk
    get_size = size.get
    cached_blocks = held_blocks = 0
    running: list[tuple[float, int, list[int], int]] = []
    hits: list[int] = []

    class Present:
        def __contains__(self, key: object) -> bool:
            return key in cached or key in held

    present = Present()
    for request in workload.requests:
        while running and running[0][0] <= request.time:
            _, _, ended, unshared = heapq.heappop(running)
            held_blocks -= unshared  # no hash: freed to the front of the queue, reused first
            for key in reversed(ended):  # tail first: the head ends newest
                count = held[key] - 1
                if count:
                    held[key] = count
                else:
                    del held[key]
                    cached[key] = None
                    weight = get_size(key, per_chunk)
                    cached_blocks += weight
                    held_blocks -= weight
        keys, covered = request.chain, request.covered_chunks
        limit_tokens = (request.input_tokens - 1) // block * block
        limit = min(covered, limit_tokens // chunk)
        if capacity is not None:
            while cached and cached_blocks + held_blocks > capacity:
                cached_blocks -= size.pop(cached.popitem(last=False)[0], per_chunk)
        found = 0
        while found < limit and (keys[found] in cached or keys[found] in held):
            found += 1
        extra = _partial_blocks(request, found, present)
        hits.append(min(found * chunk + extra * block, limit_tokens))
        # In prompt order, so that releasing tail first frees a chunk's own blocks before the
        # warm prefix's blocks it starts with, as vLLM frees blocks.
        used = list(keys[:covered])
        sizes: dict[int, int] = {}
        warm, own = request.warm_partial, request.own_partial
        if warm is not None:
            used.insert(min(warm[0], covered), warm[2])
            sizes[warm[2]] = warm[1]
            if warm[0] < covered:
                sizes[keys[warm[0]]] = per_chunk - warm[1]
        shared_blocks = covered * per_chunk
        if warm is not None and warm[0] >= covered:
            shared_blocks += warm[1]
        if own is not None:
            used.append(own[2])
            sizes[own[2]] = own[1]
            shared_blocks += own[1]
        # A running request also holds the blocks of the rest of its prompt and of its output
        # (vllm/v1/core/kv_cache_manager.py ``KVCacheManager.allocate_slots``: a slot for every
        # token it computes, all but the last one sampled). The partial last block has no
        # hash, and ``BlockPool.free_blocks`` puts such blocks at the front of the free queue:
        # they stop counting when the request ends. (A full block of the request's own tail
        # is hashed and queued like the others, but is never hit again; at most a block or
        # two per request, counted here with the unhashed ones.)
        last_token = request.input_tokens + request.output_tokens - 1
        unshared = max(0, -(-last_token // block) - shared_blocks)
        held_blocks += unshared
        for key in used:
            holders = held.get(key)
            if holders:
                held[key] = holders + 1
                continue
            if key in cached:
                del cached[key]
                weight = get_size(key, per_chunk)
                cached_blocks -= weight
            else:
                weight = sizes.get(key, per_chunk)
                if weight != per_chunk:
                    size[key] = weight
            held[key] = 1
            held_blocks += weight
        if capacity is not None:
            while cached and cached_blocks + held_blocks > capacity:
                cached_blocks -= size.pop(cached.popitem(last=False)[0], per_chunk)
            heapq.heappush(running, (request.time + hold_s, request.serial, used, unshared))
    return hits


def ceiling_hits(workload: Workload) -> list[int]:
    """Hit tokens of every request with an infinite cache: all it repeats, to the last token
    but one, in whole KV blocks (the trace's ceiling)."""
    chunk, block = workload.chunk_tokens, workload.block_tokens
    seen: set[int] = set()
    hits: list[int] = []
    for request in workload.requests:
        keys, covered = request.chain, request.covered_chunks
        limit_tokens = (request.input_tokens - 1) // block * block
        limit = min(covered, limit_tokens // chunk)
        found = 0
        while found < limit and keys[found] in seen:
            found += 1
        extra = _partial_blocks(request, found, seen)
        hits.append(min(found * chunk + extra * block, limit_tokens))
        seen.update(keys[found:covered])
        for partial in (request.own_partial, request.warm_partial):
            if partial is not None:
                seen.add(partial[2])
    return hits


class Hierarchy:
    """DRAM tier and its secondary tiers for one configuration."""

    def __init__(self, spec: HierarchySpec) -> None:
        self.dram = make_policy(spec.dram.policy, spec.dram.chunks)
        self.secondaries: list[tuple[str, CachePolicy]] = [
            (tier.name, make_policy(tier.policy, tier.chunks))
            for tier in spec.secondaries
            if tier.chunks > 0
        ]
        self.result = SimulationResult(
            tiers={
                name: TierCounters() for name in (DEVICE, DRAM, *(n for n, _ in self.secondaries))
            }
        )

    def _make_room(
        self, policy: CachePolicy, name: str, n: int, protected: Collection[int]
    ) -> bool:
        needed = n - policy.free
        if needed <= 0:
            return True
        victims = policy.evict(needed, protected)
        if victims is None:
            return False
        self.result.tiers[name].evicted += len(victims)
        return True

    def _write_through(self, keys: Sequence[int]) -> None:
        for name, tier in self.secondaries:
            counters = self.result.tiers[name]
            for key in keys:
                if key in tier:
                    continue
                if not self._make_room(tier, name, 1, _NOTHING):
                    break
                tier.insert(key)
                counters.inserted += 1

    def _lookup(
        self, keys: Sequence[int], start: int, limit: int, inserted: list[int]
    ) -> list[str]:
        """Tier of each chunk found from ``start``; chunks found below DRAM are promoted.

        The chunks found are the longest run held by some tier; those below DRAM are promoted
        in one batch (vLLM promotes them one lookup at a time; the batch makes room the same
        way for LRU), after the request's own chunks are protected from the eviction.
        """
        dram, tiers = self.dram, self.result.tiers
        secondaries = self.secondaries
        sources: list[str] = []
        promoted: dict[str, list[int]] = {}
        for index in range(start, limit):
            key = keys[index]
            if key in dram:
                sources.append(DRAM)
                continue
            for name, tier in secondaries:
                if key in tier:
                    sources.append(name)
                    promoted.setdefault(name, []).append(key)
                    break
            else:
                break
        if not promoted:
            return sources
        # DRAM can give every chunk but the run's own DRAM hits: past that, promotion fails
        # and the run stops at that chunk (vLLM: the lookup answers MISS).
        room = dram.capacity - (len(sources) - sum(len(v) for v in promoted.values()))
        taken = 0
        for position, source in enumerate(sources):
            if source != DRAM:
                if taken == room:
                    tiers[source].promotions_failed += 1
                    sources = sources[:position]
                    break
                taken += 1
        kept = set(keys[start : start + len(sources)])
        batch = [key for keys_of in promoted.values() for key in keys_of if key in kept]
        if not batch:
            return sources
        dram.on_store_miss(batch)
        made = self._make_room(dram, DRAM, len(batch), kept)
        assert made, "room was counted above"
        for name, tier in secondaries:
            keys_of = [key for key in promoted.get(name, ()) if key in kept]
            if not keys_of:
                continue
            for key in keys_of:
                dram.insert(key)
            tiers[DRAM].inserted += len(keys_of)
            inserted.extend(keys_of)
            # A read makes the chunk the tier's most recent, in the order the job reads them.
            tier.touch(keys_of[::-1])
        return sources

    def run(
        self, workload: Workload, device: Sequence[int], finish_s: float = 0.0
    ) -> SimulationResult:
        """``finish_s``: seconds from a request's lookup to its end, when the DRAM policy
        sees the request's recency update (vLLM's running time of a request)."""
        chunk = workload.chunk_tokens
        result, dram, tiers = self.result, self.dram, self.result.tiers
        connector = dram.capacity > 0  # no DRAM tier: no connector (every load goes via DRAM)
        # vLLM updates the DRAM tier's recency when a request ends, not when it is looked up
        # and stored (the offloading connector scheduler's ``request_finished`` calls
        # ``CPUOffloadingManager.on_request_finished``, vllm/v1/kv_offload/cpu/manager.py):
        # requests that end meanwhile, and their stores, come in between.
        finishing: list[tuple[float, int, list[int], set[int], set[int]]] = []
        for request, device_tokens in zip(workload.requests, device, strict=True):
            while finishing and finishing[0][0] <= request.time:
                _, _, used_keys, insertion_only_keys, reused_keys = heapq.heappop(finishing)
                dram.on_request_finished(used_keys, insertion_only_keys, reused_keys)
            result.prompt_tokens += request.input_tokens
            tiers[DEVICE].hit_tokens += device_tokens
            if not connector:
                result.prefill_tokens += request.input_tokens - device_tokens
                continue
            keys, covered = request.chain, request.covered_chunks
            full = request.input_tokens // chunk
            limit = min(covered, (request.input_tokens - 1) // chunk)
            start = device_tokens // chunk
            inserted: list[int] = []
            sources = self._lookup(keys, start, limit, inserted)
            end = start + len(sources)
            loaded = end * chunk - device_tokens
            if loaded < chunk:
                loaded, end, sources = 0, 0, []
            for offset, source in enumerate(sources):
                tiers[source].hit_tokens += chunk if offset else (start + 1) * chunk - device_tokens
            result.prefill_tokens += request.input_tokens - device_tokens - loaded
            # Offered for storing: after the load, or the whole prompt without one. Chunks
            # past the covered ones hold the request's own tail: new keys, never hit again.
            offered = list(keys[end:covered]) if end < covered else []
            offered += [hash(("tail", request.serial, i)) for i in range(max(end, covered), full)]
            new = [key for key in offered if key not in dram]
            if new:
                dram.on_store_miss(new)
                if self._make_room(dram, DRAM, len(new), set(offered)):
                    for key in new:
                        dram.insert(key)
                    tiers[DRAM].inserted += len(new)
                    inserted.extend(new)
                    self._write_through(new)
                else:
                    result.stores_failed += 1
                    new = []
            used = list(keys[start:end]) + offered
            insertion_only = set(inserted)
            reused = {key for key in used if key not in insertion_only and key in dram}
            if finish_s > 0:
                entry = (request.time + finish_s, request.serial, used, insertion_only, reused)
                heapq.heappush(finishing, entry)
            else:
                dram.on_request_finished(used, insertion_only, reused)
        while finishing:
            _, _, used_keys, insertion_only_keys, reused_keys = heapq.heappop(finishing)
            dram.on_request_finished(used_keys, insertion_only_keys, reused_keys)
        return result


def simulate(
    workload: Workload, device: Sequence[int], spec: HierarchySpec, finish_s: float = 0.0
) -> SimulationResult:
    """Hit tokens per tier and prefill tokens of ``workload`` under ``spec``; ``finish_s``
    as in :meth:`Hierarchy.run`."""
    return Hierarchy(spec).run(workload, device, finish_s)
