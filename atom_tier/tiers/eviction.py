"""atom-tier's DRAM-tier eviction policy for agentic sessions ("sticky"), without vLLM.

Agentic users come back after a think time in roughly round-robin order. When the tier is
smaller than what they cycle through, LRU evicts every session's chunks just before that
session returns and serves nothing (issue 19; ``bench/eviction_study.py`` measures it). Sticky
keeps a stable set of chunks instead of cycling through all of them:

* **kept** (at most ``kept_share`` of the tier): chunks that proved they come back, admitted
  while there is room and then left alone, so the sessions they belong to keep hitting;
* **trial** (the rest, LRU): new chunks. A chunk moves to kept when a request reuses it, or
  when it is stored again soon after being evicted (its key is in the **ghost** list of the
  last ``capacity`` evicted keys), while kept has room.

Eviction takes, in this order: kept chunks idle for more than ``idle_factor`` times the usual
gap between two uses of a kept chunk (finished sessions: they free their room), trial chunks
least recently used first, and last kept chunks least recently used first. Within a request,
uses are applied tail first, so a chain loses its tail before its head (as vLLM's LRU).

Time is counted in finished requests. :class:`StickyCore` is the whole algorithm over any
hashable keys; ``atom_tier.tiers.vllm_eviction`` runs it as vLLM's ``CachePolicy`` and the
planner (``atom_tier.plan.policies``) simulates the same code.
Memory per resident chunk: one entry in an ordered dict (key -> int) and, while a transfer
holds it, one in a set; per evicted key, one ghost entry (at most ``capacity`` of them).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

# What ATOM_TIER_EVICTION=sticky tells vLLM's CachePolicyFactory: an out-of-tree class name
# and the module it is imported from (vllm/v1/kv_offload/cpu/policies/factory.py).
VLLM_POLICY_CLASS = "StickyCachePolicy"
VLLM_POLICY_MODULE = "atom_tier.tiers.vllm_eviction"


class StickyCore(Generic[K]):
    """Kept / trial / ghost bookkeeping; capacity is counted in chunks."""

    kept_share = 0.8
    idle_factor = 3.0
    gap_weight = 0.01  # weight of the newest gap in the moving average

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must not be negative, got {capacity}")
        self.capacity = capacity
        self.kept_capacity = int(capacity * self.kept_share)
        # key -> request clock of its last use, least recently used first
        self.kept: OrderedDict[K, int] = OrderedDict()
        self.trial: OrderedDict[K, int] = OrderedDict()
        self.ghost: OrderedDict[K, None] = OrderedDict()
        self.returning: set[K] = set()  # store misses found in the ghost, until inserted
        self.pinned: set[K] = set()  # not evictable (vLLM: a transfer holds the chunk)
        self.clock = 0
        self.usual_gap: float | None = None

    def __contains__(self, key: K) -> bool:
        return key in self.kept or key in self.trial

    def __len__(self) -> int:
        return len(self.kept) + len(self.trial)

    def insert(self, key: K, pinned: bool = False) -> None:
        if pinned:
            self.pinned.add(key)
        if key in self.returning:
            self.returning.discard(key)
            if len(self.kept) < self.kept_capacity:
                self.kept[key] = self.clock
                return
        self.trial[key] = self.clock

    def remove(self, key: K) -> None:
        """Forget a chunk that was never stored (a failed store): no ghost entry."""
        if self.kept.pop(key, None) is None:
            self.trial.pop(key, None)
        self.pinned.discard(key)

    def store_miss(self, keys: Iterable[K]) -> None:
        """Keys about to be inserted: those evicted lately are coming back."""
        ghost = self.ghost
        for key in keys:
            if key in ghost:
                del ghost[key]
                self.returning.add(key)

    def request_finished(self, keys: Sequence[K], reused: Collection[K]) -> None:
        """One request used ``keys`` (head of the prompt first); ``reused``: real reuses."""
        self.clock += 1
        now = self.clock
        kept, trial = self.kept, self.trial
        for key in reversed(keys):
            if key in kept:
                if key in reused:
                    gap = now - kept[key]
                    usual = self.usual_gap
                    self.usual_gap = (
                        gap if usual is None else usual + self.gap_weight * (gap - usual)
                    )
                kept[key] = now
                kept.move_to_end(key)
            elif key in trial:
                if key in reused and len(kept) < self.kept_capacity:
                    del trial[key]
                    kept[key] = now
                else:
                    trial[key] = now
                    trial.move_to_end(key)

    def evict(self, n: int, protected: Collection[K]) -> list[K] | None:
        """Remove exactly ``n`` evictable keys not in ``protected``; None (no change) if not
        possible."""
        if n <= 0:
            return []
        chosen: list[K] = []
        taken: set[K] = set()
        skip = self.pinned

        def take(entries: OrderedDict[K, int], idle_before: float | None) -> None:
            for key, last in entries.items():
                if len(chosen) == n:
                    return
                if idle_before is not None and last >= idle_before:
                    return  # ordered by last use: the rest are newer
                if key in skip or key in protected or key in taken:
                    continue
                chosen.append(key)
                taken.add(key)

        if self.usual_gap is not None:
            take(self.kept, self.clock - self.idle_factor * self.usual_gap)
        take(self.trial, None)
        take(self.kept, None)
        if len(chosen) < n:
            return None
        ghost = self.ghost
        for key in chosen:
            if self.kept.pop(key, None) is None:
                del self.trial[key]
            ghost[key] = None
        for _ in range(len(ghost) - self.capacity):
            ghost.popitem(last=False)
        return chosen

    def mark_evictable(self, key: K) -> None:
        self.pinned.discard(key)

    def mark_non_evictable(self, key: K) -> None:
        self.pinned.add(key)

    def clear(self) -> None:
        for part in (self.kept, self.trial, self.ghost, self.returning, self.pinned):
            part.clear()
        self.clock = 0
        self.usual_gap = None
