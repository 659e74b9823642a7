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

Each request is applied at once when it is looked up: at its arrival, or, with the time
model of :mod:`atom_tier.plan.latency`, when the server admits it (:meth:`Hierarchy.lookup`
and :meth:`Hierarchy.hold` take one request at a time). Left out: chunks pinned while a
transfer holds them, and a request that waits for its promotions.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from atom_tier.plan.device import NULL_BLOCKS as NULL_BLOCKS
from atom_tier.plan.device import ceiling_hits as ceiling_hits
from atom_tier.plan.device import device_hits as device_hits
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


class Hierarchy:
    """DRAM tier and its secondary tiers for one configuration."""

    def __init__(self, spec: HierarchySpec, chunk_tokens: int) -> None:
        self.chunk = chunk_tokens
        self.dram = make_policy(spec.dram.policy, spec.dram.chunks)
        self.connector = self.dram.capacity > 0  # no DRAM tier: no connector (loads go via DRAM)
        self.finishing: list[tuple[float, int, list[int], set[int], set[int]]] = []
        self._pending: tuple[float, int, list[int], set[int], set[int]] | None = None
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

    def step(self, request: PlannedRequest, device_tokens: int, time: float, end: float) -> int:
        """:meth:`lookup` and :meth:`hold` in one."""
        loaded = self.lookup(request, device_tokens, time)
        self.hold(end)
        return loaded

    def hold(self, end: float) -> None:
        """The request last looked up ends at ``end``: the DRAM policy sees its recency
        update then (at once when ``end`` is not after its lookup)."""
        if self._pending is None:
            return
        time, serial, used, insertion_only, reused = self._pending
        self._pending = None
        if end > time:
            heapq.heappush(self.finishing, (end, serial, used, insertion_only, reused))
        else:
            self.dram.on_request_finished(used, insertion_only, reused)

    def lookup(self, request: PlannedRequest, device_tokens: int, time: float) -> int:
        """Apply ``request``, looked up at ``time`` with ``device_tokens`` hit on the device;
        returns the tokens it loads from the tiers. :meth:`hold` says when it ends."""
        chunk = self.chunk
        result, dram, tiers = self.result, self.dram, self.result.tiers
        # vLLM updates the DRAM tier's recency when a request ends, not when it is looked up
        # and stored (the offloading connector scheduler's ``request_finished`` calls
        # ``CPUOffloadingManager.on_request_finished``, vllm/v1/kv_offload/cpu/manager.py):
        # requests that end meanwhile, and their stores, come in between.
        self.finish(time)
        result.prompt_tokens += request.input_tokens
        tiers[DEVICE].hit_tokens += device_tokens
        if not self.connector:
            result.prefill_tokens += request.input_tokens - device_tokens
            return 0
        keys, covered = request.chain, request.covered_chunks
        full = request.input_tokens // chunk
        limit = min(covered, (request.input_tokens - 1) // chunk)
        start = device_tokens // chunk
        inserted: list[int] = []
        sources = self._lookup(keys, start, limit, inserted)
        stop = start + len(sources)
        loaded = stop * chunk - device_tokens
        if loaded < chunk:
            loaded, stop, sources = 0, 0, []
        for offset, source in enumerate(sources):
            tiers[source].hit_tokens += chunk if offset else (start + 1) * chunk - device_tokens
        result.prefill_tokens += request.input_tokens - device_tokens - loaded
        # Offered for storing: after the load, or the whole prompt without one. Chunks
        # past the covered ones hold the request's own tail: new keys, never hit again.
        offered = list(keys[stop:covered]) if stop < covered else []
        offered += [hash(("tail", request.serial, i)) for i in range(max(stop, covered), full)]
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
        used = list(keys[start:stop]) + offered
        insertion_only = set(inserted)
        reused = {key for key in used if key not in insertion_only and key in dram}
        self._pending = (time, request.serial, used, insertion_only, reused)
        return loaded

    def finish(self, time: float = math.inf) -> None:
        """Recency updates of the requests that end by ``time`` (all: the workload's end)."""
        finishing = self.finishing
        while finishing and finishing[0][0] <= time:
            _, _, used_keys, insertion_only_keys, reused_keys = heapq.heappop(finishing)
            self.dram.on_request_finished(used_keys, insertion_only_keys, reused_keys)

    def run(
        self, workload: Workload, device: Sequence[int], finish_s: float = 0.0
    ) -> SimulationResult:
        """Every request, each looked up when it is sent; ``finish_s``: seconds from a
        request's lookup to its end (vLLM's running time of a request)."""
        for request, device_tokens in zip(workload.requests, device, strict=True):
            self.step(request, device_tokens, request.time, request.time + finish_s)
        self.finish()
        return self.result


def simulate(
    workload: Workload, device: Sequence[int], spec: HierarchySpec, finish_s: float = 0.0
) -> SimulationResult:
    """Hit tokens per tier and prefill tokens of ``workload`` under ``spec``; ``finish_s``
    as in :meth:`Hierarchy.run`."""
    return Hierarchy(spec, workload.chunk_tokens).run(workload, device, finish_s)
