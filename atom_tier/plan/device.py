"""The device prefix cache (vLLM's GPU block pool, LRU), request by request.

See :mod:`atom_tier.plan.simulator` for what a request does on the device. :class:`DeviceCache`
takes one request at a time, with the time it is looked up (scheduled) and the time it ends,
so that a time model can place each request from the hits of the ones before it.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Container

from atom_tier.plan.workload import PlannedRequest, Workload

# vLLM's GPU block pool keeps one block as the null block, never cached
# (vllm/v1/core/block_pool.py ``BlockPool.__init__``: ``self.null_block = ...popleft()``).
NULL_BLOCKS = 1

# What a running request holds: its serial, its keys in prompt order, its unhashed blocks.
Held = tuple[int, list[int], int] | None


def partial_blocks(request: PlannedRequest, found: int, present: Container[int]) -> int:
    """Blocks of chunk ``found`` (the first chunk missing) that still hit: the longest of the
    previous request's blocks in it and the warm prefix's blocks in it that are cached."""
    blocks = 0
    for candidate in (request.partial, request.warm_partial):
        if candidate is not None and candidate[0] == found and candidate[1] > blocks:
            if candidate[2] in present:
                blocks = candidate[1]
    return blocks


class DeviceCache:
    """Device prefix-cache hits of requests taken in order (``device_chunks`` None: infinite).

    The capacity is counted in KV blocks (``device_chunks`` x blocks per chunk, less vLLM's
    null block): a partial chunk's key takes its own blocks, and a session's chunk that
    starts with the warm prefix's blocks takes only the rest (one block per hash, as vLLM's
    block pool caches them).

    A request holds its chunks from its lookup until its end, as a running request holds its
    KV blocks (a request waiting in the queue holds none); only chunks no running request
    holds can be evicted. When running requests alone fill the device, nothing else stays
    cached (vLLM would make the request wait).
    """

    def __init__(self, workload: Workload, device_chunks: int | None) -> None:
        self.chunk, self.block = workload.chunk_tokens, workload.block_tokens
        self.per_chunk = self.chunk // self.block
        self.capacity = (
            None if device_chunks is None else device_chunks * self.per_chunk - NULL_BLOCKS
        )
        self.cached: OrderedDict[int, None] = OrderedDict()  # held by none, least recent first
        self.held: dict[int, int] = {}  # chunk -> running requests holding it
        self.size: dict[int, int] = {}  # blocks of a cached or held key not a whole chunk
        self.cached_blocks = self.held_blocks = 0
        self.running: list[tuple[float, int, list[int], int]] = []
        self._pending: Held = None

    def __contains__(self, key: object) -> bool:
        return key in self.cached or key in self.held

    def _end_running(self, time: float) -> None:
        running, held, cached, size = self.running, self.held, self.cached, self.size
        if not running or running[0][0] > time:
            return
        per_chunk, get_size = self.per_chunk, size.get
        moved = unshared_freed = 0  # blocks from held to cached; unhashed blocks freed
        while running and running[0][0] <= time:
            _, _, ended, unshared = heapq.heappop(running)
            unshared_freed += unshared  # no hash: freed to the front of the queue
            for key in reversed(ended):  # tail first: the head ends newest
                count = held[key] - 1
                if count:
                    held[key] = count
                else:
                    del held[key]
                    cached[key] = None
                    moved += get_size(key, per_chunk)
        self.cached_blocks += moved
        self.held_blocks -= moved + unshared_freed

    def new_blocks(self, request: PlannedRequest) -> int:
        """Blocks ``request``'s prompt needs beyond those running requests hold already."""
        held, size, per_chunk = self.held, self.size, self.per_chunk
        shared = sum(size.get(k, per_chunk) for k in request.chain[: request.covered_chunks]
                     if k in held)  # fmt: skip
        warm = request.warm_partial
        if warm is not None and warm[2] in held:
            shared += warm[1]
        return max(0, -(-request.input_tokens // self.block) - shared)

    def admit(self, request: PlannedRequest, time: float) -> float:
        """When ``request``, first in line at ``time``, is admitted: once the blocks no running
        request holds can take its prompt's new blocks (vLLM's admission gate,
        ``KVCacheManager.allocate_slots`` with ``full_sequence_must_fit``; cached blocks no
        request holds are evictable, so free); at once when none runs or the pool is
        infinite."""
        self._end_running(time)
        if self.capacity is None:
            return time
        while self.running and self.capacity - self.held_blocks < self.new_blocks(request):
            time = max(time, self.running[0][0])
            self._end_running(time)
        return time

    def _evict(self) -> None:
        if self.capacity is None:
            return
        cached, size = self.cached, self.size
        while cached and self.cached_blocks + self.held_blocks > self.capacity:
            self.cached_blocks -= size.pop(cached.popitem(last=False)[0], self.per_chunk)

    def step(self, request: PlannedRequest, time: float, end: float) -> int:
        """Hit tokens of ``request``, looked up at ``time``; it holds its blocks until ``end``."""
        hit = self.lookup(request, time)
        self.hold(end)
        return hit

    def hold(self, end: float) -> None:
        """The request last looked up holds its blocks until ``end``."""
        if self.capacity is not None and self._pending is not None:
            heapq.heappush(self.running, (end, *self._pending))
        self._pending = None

    def detach(self) -> Held:
        """What the request last looked up holds, for :meth:`hold_detached` once its end is
        known (a time model that steps the server finds it only when the request ends)."""
        pending, self._pending = self._pending, None
        return pending

    def hold_detached(self, held: Held, end: float) -> None:
        """A detached request holds its blocks until ``end`` (not before its lookup)."""
        self._pending = held
        self.hold(end)

    def fits(self, request: PlannedRequest, time: float) -> bool:
        """Whether the blocks no running request holds at ``time`` can take ``request``'s
        prompt's new blocks (vLLM's admission gate, as in :meth:`admit`)."""
        self._end_running(time)
        return self.capacity is None or self.capacity - self.held_blocks >= self.new_blocks(request)

    def lookup(self, request: PlannedRequest, time: float) -> int:
        """Hit tokens of ``request``, looked up at ``time``; :meth:`hold` says until when it
        holds its blocks (a time model needs the hit to place the end)."""
        chunk, block, per_chunk = self.chunk, self.block, self.per_chunk
        held, cached = self.held, self.cached
        self._end_running(time)
        keys, covered = request.chain, request.covered_chunks
        limit_tokens = (request.input_tokens - 1) // block * block
        limit = min(covered, limit_tokens // chunk)
        self._evict()
        found = 0
        while found < limit and (keys[found] in cached or keys[found] in held):
            found += 1
        extra = partial_blocks(request, found, self)
        hit = min(found * chunk + extra * block, limit_tokens)
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
        size = self.size
        taken = newly_held = 0  # blocks from cached to held; blocks held anew
        for key in used:
            holders = held.get(key)
            if holders:
                held[key] = holders + 1
                continue
            if key in cached:
                del cached[key]
                weight = size.get(key, per_chunk)
                taken += weight
            else:
                weight = sizes.get(key, per_chunk)
                if weight != per_chunk:
                    size[key] = weight
            held[key] = 1
            newly_held += weight
        self.cached_blocks -= taken
        self.held_blocks += unshared + newly_held
        self._evict()
        self._pending = (request.serial, used, unshared)
        return hit


def device_hits(workload: Workload, device_chunks: int | None, hold_s: float = 0.0) -> list[int]:
    """Device prefix-cache hit tokens of every request (``device_chunks`` None: infinite),
    each looked up when it is sent and holding its blocks ``hold_s`` seconds (vLLM's request
    inference time: the running part of the request time)."""
    device = DeviceCache(workload, device_chunks)
    return [device.step(r, r.time, r.time + hold_s) for r in workload.requests]


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
        extra = partial_blocks(request, found, seen)
        hits.append(min(found * chunk + extra * block, limit_tokens))
        seen.update(keys[found:covered])
        for partial in (request.own_partial, request.warm_partial):
            if partial is not None:
                seen.add(partial[2])
    return hits
