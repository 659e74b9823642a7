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

When each step happens, as in vLLM: the lookup when the server admits the request; the
stores when its prompt's chunks are computed (the offloading connector's scheduler calls
``prepare_store`` from ``build_connector_meta`` for the chunks each engine step completes,
vllm/distributed/kv_transfer/kv_connector/v1/offloading/scheduler.py ``_build_store_jobs``;
only then do the chunks take DRAM room, evict, and answer lookups, and they are written to
the secondary tiers when the store completes, ``TieringOffloadingManager.complete_store``);
the recency update when it ends. :meth:`Hierarchy.lookup` takes a request at its lookup time
with, optionally, the time its chunks are stored (``store_at``: one store event, processed
in time order with the other requests' lookups; :meth:`Hierarchy.store` stores up to a
number of computed tokens, for a model that steps the engine); without, it stores at once.
With a deferred store, the chunks a request loads are pinned (vLLM's ``prepare_load`` raises
their ``ref_cnt``; ``evict`` passes them over) until its first store: vLLM computes nothing of
a request before its load is done (``complete_load``). Left out: chunks pinned while their own
store is in flight (a lookup of one waits for it in vLLM, ``HIT_PENDING``; here it is a miss
before the store event and a hit after), and a request that waits for its promotions.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from atom_tier.plan.device import NULL_BLOCKS as NULL_BLOCKS
from atom_tier.plan.device import ceiling_hits as ceiling_hits
from atom_tier.plan.device import device_hits as device_hits
from atom_tier.plan.policies import CachePolicy, make_policy
from atom_tier.plan.tier_types import DEVICE as DEVICE
from atom_tier.plan.tier_types import DRAM as DRAM
from atom_tier.plan.tier_types import NVME as NVME
from atom_tier.plan.tier_types import SHARED as SHARED
from atom_tier.plan.tier_types import HierarchySpec as HierarchySpec
from atom_tier.plan.tier_types import SimulationResult as SimulationResult
from atom_tier.plan.tier_types import TierCounters as TierCounters
from atom_tier.plan.tier_types import TierSpec as TierSpec
from atom_tier.plan.workload import PlannedRequest, Workload

_NOTHING: frozenset[int] = frozenset()


@dataclass(eq=False)
class Looked:
    """A request between its lookup and its end, as the connector tracks it."""

    time: float  # of its lookup
    serial: int
    offered: list[tuple[int, int]]  # (chunk index, key) offered for storing, not stored yet
    used: list[int]  # keys it loaded, then every key it offers, head first
    inserted: list[int]  # keys it put into DRAM (promotions, stores)
    reused: set[int] = field(default_factory=set)  # keys it found in DRAM (loaded, offered)
    pending: bool = True  # its offered chunks are not all stored yet
    pins: list[int] = field(default_factory=list)  # keys it loads, pinned until its first store


class Hierarchy:
    """DRAM tier and its secondary tiers for one configuration."""

    def __init__(self, spec: HierarchySpec, chunk_tokens: int) -> None:
        self.chunk = chunk_tokens
        self.dram = make_policy(spec.dram.policy, spec.dram.chunks)
        self.connector = self.dram.capacity > 0  # no DRAM tier: no connector (loads go via DRAM)
        self.finishing: list[tuple[float, int, Looked]] = []
        self.storing: list[tuple[float, int, Looked]] = []  # deferred stores
        self._pending: Looked | None = None
        self.pinned: Counter[int] = Counter()  # DRAM keys loads in flight hold
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

    def _protect(self, keys: Collection[int]) -> Collection[int]:
        """``keys`` and the chunks loads in flight pin: what an eviction may not take."""
        return set(keys).union(self.pinned)

    def _unpin(self, looked: Looked) -> None:
        pinned = self.pinned
        for key in looked.pins:
            pinned[key] -= 1
            if not pinned[key]:
                del pinned[key]
        looked.pins = []

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
        # DRAM can give every chunk but the run's own DRAM hits and the chunks loads in flight
        # pin: past that, promotion fails and the run stops at that chunk (vLLM: the lookup
        # answers MISS).
        found = [keys[start + i] for i, source in enumerate(sources) if source == DRAM]
        room = dram.capacity - len(self._protect(found))
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
        made = self._make_room(dram, DRAM, len(batch), self._protect(kept))
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

    def step(
        self,
        request: PlannedRequest,
        device_tokens: int,
        time: float,
        end: float,
        store_at: float | None = None,
    ) -> int:
        """:meth:`lookup` and :meth:`hold` in one."""
        loaded = self.lookup(request, device_tokens, time, defer=store_at is not None)
        self.hold(end, store_at)
        return loaded

    def hold(self, end: float, store_at: float | None = None) -> None:
        """The request last looked up ends at ``end``: the DRAM policy sees its recency
        update then (at once when ``end`` is not after its lookup). A deferred store
        (:meth:`lookup` with ``defer``) still to come happens at ``store_at``: at once when
        None or not after the lookup, and never after ``end``."""
        looked = self._pending
        if looked is None:
            return
        self._pending = None
        # A model that says only when the request ends and stores does not say when its load
        # is done: it pins nothing (a load takes about a step, far less than the request).
        self._unpin(looked)
        if looked.pending:
            if store_at is None or store_at <= looked.time:
                self._store(looked)
            else:
                store_at = min(store_at, max(end, looked.time))
                heapq.heappush(self.storing, (store_at, looked.serial, looked))
                end = max(end, store_at)
        if end > looked.time:
            heapq.heappush(self.finishing, (end, looked.serial, looked))
        else:
            self._finished(looked)

    def lookup(
        self, request: PlannedRequest, device_tokens: int, time: float, defer: bool = False
    ) -> int:
        """Apply ``request``, looked up at ``time`` with ``device_tokens`` hit on the device;
        returns the tokens it loads from the tiers. It stores its chunks at once, or with
        ``defer`` when :meth:`hold`'s ``store_at`` or :meth:`store` say; :meth:`hold` says
        when it ends."""
        chunk = self.chunk
        result, tiers = self.result, self.result.tiers
        # Stores and ends of other requests up to now come first. vLLM updates the DRAM
        # tier's recency when a request ends, not when it is looked up and stored (the
        # offloading connector scheduler's ``request_finished`` calls
        # ``CPUOffloadingManager.on_request_finished``, vllm/v1/kv_offload/cpu/manager.py).
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
        offered = list(enumerate(keys[stop:covered], stop)) if stop < covered else []
        offered += [(i, hash(("tail", request.serial, i))) for i in range(max(stop, covered), full)]
        looked = Looked(time, request.serial, offered, list(keys[start:stop]), inserted)
        looked.used += [key for _, key in offered]
        self._pending = looked
        if not defer:
            self._store(looked)
        elif stop:
            looked.pins = list(keys[start:stop])
            self.pinned.update(looked.pins)
        return loaded

    def loaded(self, looked: Looked, time: float) -> None:
        """``looked``'s load is done at ``time``: its chunks can be evicted again (vLLM's
        ``complete_load``; without this call, at its first store)."""
        self.finish(time)
        self._unpin(looked)

    def store(self, looked: Looked, computed_tokens: int, time: float) -> None:
        """``looked`` (a deferred request, from :meth:`detach`) has its first
        ``computed_tokens`` prompt tokens computed at ``time``: its offered chunks within
        them are stored (vLLM's ``prepare_store`` for the chunks an engine step completes)."""
        self.finish(time)
        self._store(looked, computed_tokens)

    def _store(self, looked: Looked, computed_tokens: int | None = None) -> None:
        dram = self.dram
        self._unpin(looked)  # its load is done: vLLM computes its prompt only after it
        count = len(looked.offered)
        if computed_tokens is not None:
            count = sum(
                1 for index, _ in looked.offered if (index + 1) * self.chunk <= computed_tokens
            )
        batch = [key for _, key in looked.offered[:count]]
        del looked.offered[:count]
        looked.pending = bool(looked.offered)
        new = [key for key in batch if key not in dram]
        if new:
            dram.on_store_miss(new)
            # vLLM's prepare_store protects the keys of its call and stores none of a batch
            # it cannot make room for.
            if self._make_room(dram, DRAM, len(new), self._protect(batch)):
                for key in new:
                    dram.insert(key)
                self.result.tiers[DRAM].inserted += len(new)
                looked.inserted.extend(new)
                self._write_through(new)
            else:
                self.result.stores_failed += 1
        inserted = set(looked.inserted)
        looked.reused.update(k for k in looked.used if k not in inserted and k in dram)

    def _finished(self, looked: Looked) -> None:
        self._unpin(looked)
        inserted = set(looked.inserted)
        self.dram.on_request_finished(looked.used, inserted, looked.reused - inserted)

    def detach(self) -> Looked | None:
        """The request last looked up, for :meth:`store` and :meth:`hold_detached` (a time
        model that steps the server finds its stores and end only later)."""
        pending, self._pending = self._pending, None
        return pending

    def hold_detached(self, looked: Looked | None, end: float) -> None:
        """A detached request ends at ``end``; what it has not stored yet is stored now."""
        self._pending = looked
        self.hold(end)

    def finish(self, time: float = math.inf) -> None:
        """Deferred stores and recency updates up to ``time`` (all: the workload's end), in
        time order, a store before an end at the same time."""
        storing, finishing = self.storing, self.finishing
        while storing or finishing:
            at_store = storing[0][0] if storing else math.inf
            at_end = finishing[0][0] if finishing else math.inf
            if min(at_store, at_end) > time:
                break
            if at_store <= at_end:
                self._store(heapq.heappop(storing)[2])
            else:
                self._finished(heapq.heappop(finishing)[2])

    def run(
        self,
        workload: Workload,
        device: Sequence[int],
        finish_s: float = 0.0,
        times: Sequence[tuple[float, float]] | None = None,
    ) -> SimulationResult:
        """Every request, each looked up at its time (when it is sent); ``finish_s``: seconds
        from a request's lookup to its end (vLLM's running time of a request), its chunks
        stored at its lookup. ``times``: instead, each request's (store time, end time)."""
        for index, (request, device_tokens) in enumerate(
            zip(workload.requests, device, strict=True)
        ):
            if times is None:
                self.step(request, device_tokens, request.time, request.time + finish_s)
            else:
                store_at, end = times[index]
                self.step(request, device_tokens, request.time, end, store_at)
        self.finish()
        return self.result


def simulate(
    workload: Workload, device: Sequence[int], spec: HierarchySpec, finish_s: float = 0.0
) -> SimulationResult:
    """Hit tokens per tier and prefill tokens of ``workload`` under ``spec``; ``finish_s``
    as in :meth:`Hierarchy.run`."""
    return Hierarchy(spec, workload.chunk_tokens).run(workload, device, finish_s)
