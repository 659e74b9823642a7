"""Cache policies of the planner's simulated tiers: a small interface, LRU and ARC.

The DRAM tier *is* vLLM 0.32's CPU offloading manager, so the two policies mirror
``vllm/v1/kv_offload/cpu/policies/lru.py`` and ``arc.py`` operation for operation (checked
against vLLM's own classes in ``tests/plan/test_plan_policies.py``), minus what only matters
while transfers are in flight (reference counts, pending writes): the simulator applies each
request at once.

A request's use of a tier, in the order vLLM makes the calls:

* ``on_store_miss(keys)`` before new keys are inserted (ARC learns from its ghost lists);
* ``evict(n, protected)`` when the tier is full, then ``insert(key)`` for each new key;
* ``on_request_finished(keys, insertion_only, reused)`` with every key the request used, head
  of the prompt first: vLLM's request-scoped recency update;
* ``touch(keys)``: a plain use outside a request's accounting (the NVMe tier's reads).

Adding a policy is one subclass of :class:`CachePolicy` and one entry in :data:`POLICIES`.
Besides vLLM's two, the study of issue 19 (``bench/eviction_study.py``) compares S3-FIFO (a
scan-resistant FIFO, simulated only) and atom-tier's own DRAM policy, whose code is the one
vLLM runs (:mod:`atom_tier.tiers.eviction`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence

from atom_tier.tiers.eviction import StickyCore

Key = Hashable


class CachePolicy(ABC):
    """What a tier holds and which key it gives up; capacity is counted in chunks."""

    name = "base"

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must not be negative, got {capacity}")
        self.capacity = capacity

    @abstractmethod
    def __contains__(self, key: Key) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def insert(self, key: Key) -> None:
        """Add a key that is not held (the caller made room first)."""

    @abstractmethod
    def evict(self, n: int, protected: Collection[Key]) -> list[Key] | None:
        """Remove exactly ``n`` keys not in ``protected``; None (and no change) if impossible."""

    @abstractmethod
    def touch(self, keys: Sequence[Key]) -> None:
        """A use of ``keys`` (head first) outside request accounting."""

    def on_store_miss(self, keys: Sequence[Key]) -> None:
        """Keys about to be inserted (vLLM calls this before ``insert``)."""
        return

    def on_request_finished(
        self, keys: Sequence[Key], insertion_only: Collection[Key], reused: Collection[Key]
    ) -> None:
        """Every key a request stored or loaded, head of the prompt first."""
        self.touch(keys)

    @property
    def free(self) -> int:
        return max(0, self.capacity - len(self))


class LruPolicy(CachePolicy):
    """vLLM's LRU: a use re-ranks keys tail to head, so the head of a prompt is the newest."""

    name = "lru"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.order: OrderedDict[Key, None] = OrderedDict()  # least recent first

    def __contains__(self, key: Key) -> bool:
        return key in self.order

    def __len__(self) -> int:
        return len(self.order)

    def insert(self, key: Key) -> None:
        self.order[key] = None

    def evict(self, n: int, protected: Collection[Key]) -> list[Key] | None:
        if n <= 0:
            return []
        victims: list[Key] = []
        for key in self.order:
            if key not in protected:
                victims.append(key)
                if len(victims) == n:
                    break
        if len(victims) < n:
            return None
        for key in victims:
            del self.order[key]
        return victims

    def touch(self, keys: Sequence[Key]) -> None:
        order = self.order
        move = order.move_to_end
        deque(map(move, (k for k in reversed(keys) if k in order)), maxlen=0)


class ArcPolicy(CachePolicy):
    """vLLM's ARC: T1 (seen once), T2 (reused), ghost lists B1/B2 steering T1's target size."""

    name = "arc"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.target_t1_size = 0.0
        self.t1: OrderedDict[Key, None] = OrderedDict()
        self.t2: OrderedDict[Key, None] = OrderedDict()
        self.b1: OrderedDict[Key, None] = OrderedDict()
        self.b2: OrderedDict[Key, None] = OrderedDict()

    def __contains__(self, key: Key) -> bool:
        return key in self.t1 or key in self.t2

    def __len__(self) -> int:
        return len(self.t1) + len(self.t2)

    def insert(self, key: Key) -> None:
        self.t1[key] = None
        self.b1.pop(key, None)
        self.b2.pop(key, None)

    def _adapt_to_ghost_hit(self, key: Key) -> None:
        if key in self.b1:
            delta = max(1.0, len(self.b2) / len(self.b1))
            self.target_t1_size = min(self.target_t1_size + delta, self.capacity)
            self.b1.move_to_end(key)
        elif key in self.b2:
            delta = max(1.0, len(self.b1) / len(self.b2))
            self.target_t1_size = max(self.target_t1_size - delta, 0)
            self.b2.move_to_end(key)

    def on_store_miss(self, keys: Sequence[Key]) -> None:
        for key in reversed(keys):
            self._adapt_to_ghost_hit(key)

    def touch(self, keys: Sequence[Key]) -> None:
        # Every key the simulator touches is ready (no pending writes), so T1 -> T2.
        for key in reversed(keys):
            if key in self.t1:
                del self.t1[key]
                self.t2[key] = None
            elif key in self.t2:
                self.t2.move_to_end(key)
            else:
                self._adapt_to_ghost_hit(key)

    def on_request_finished(
        self, keys: Sequence[Key], insertion_only: Collection[Key], reused: Collection[Key]
    ) -> None:
        for key in reversed(keys):
            if key in insertion_only:
                if key in self.t1:
                    self.t1.move_to_end(key)
                elif key in self.t2:
                    self.t2.move_to_end(key)
            elif key in reused:
                if key in self.t1:
                    del self.t1[key]
                    self.t2[key] = None
                elif key in self.t2:
                    self.t2.move_to_end(key)

    def evict(self, n: int, protected: Collection[Key]) -> list[Key] | None:
        if n <= 0:
            return []
        chosen: list[tuple[Key, bool]] = []  # (key, from T1)
        virtual_t1 = len(self.t1)
        # Live iterators, as vLLM's: nothing changes until every victim is chosen.
        t1_keys = iter(self.t1)
        t2_keys = iter(self.t2)

        def next_candidate(keys: Iterable[Key]) -> Key | None:
            for key in keys:
                if key not in protected:
                    return key
            return None

        for _ in range(n):
            pick: tuple[Key, bool] | None = None
            if virtual_t1 >= int(self.target_t1_size):
                key = next_candidate(t1_keys)
                if key is not None:
                    pick, virtual_t1 = (key, True), virtual_t1 - 1
            if pick is None:
                key = next_candidate(t2_keys)
                if key is not None:
                    pick = (key, False)
            if pick is None:
                key = next_candidate(t1_keys)
                if key is None:
                    return None
                pick, virtual_t1 = (key, True), virtual_t1 - 1
            chosen.append(pick)
        for key, from_t1 in chosen:
            if from_t1:
                del self.t1[key]
                self.b1[key] = None
            else:
                del self.t2[key]
                self.b2[key] = None
        for ghost in (self.b1, self.b2):
            for _ in range(len(ghost) - self.capacity):
                ghost.popitem(last=False)
        return [key for key, _ in chosen]


class S3FifoPolicy(CachePolicy):
    """S3-FIFO (Yang et al., SOSP 2023): a small FIFO for new keys, a main FIFO for keys used
    again, and a ghost FIFO of keys the small one dropped unused (stored again: straight into
    main). Reuse is counted as vLLM reports it, once per request, capped at 3."""

    name = "s3fifo"
    small_share = 0.1

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.small_capacity = max(1, int(capacity * self.small_share))
        self.small: OrderedDict[Key, None] = OrderedDict()
        self.main: OrderedDict[Key, None] = OrderedDict()
        self.ghost: OrderedDict[Key, None] = OrderedDict()
        self.freq: dict[Key, int] = {}

    def __contains__(self, key: Key) -> bool:
        return key in self.freq

    def __len__(self) -> int:
        return len(self.freq)

    def insert(self, key: Key) -> None:
        self.freq[key] = 0
        if key in self.ghost:
            del self.ghost[key]
            self.main[key] = None
        else:
            self.small[key] = None

    def touch(self, keys: Sequence[Key]) -> None:
        freq = self.freq
        for key in keys:
            if key in freq:
                freq[key] = min(freq[key] + 1, 3)

    def on_request_finished(
        self, keys: Sequence[Key], insertion_only: Collection[Key], reused: Collection[Key]
    ) -> None:
        self.touch([key for key in keys if key in reused])

    def evict(self, n: int, protected: Collection[Key]) -> list[Key] | None:
        if n <= 0:
            return []
        freq = self.freq
        if len(freq) - sum(1 for key in protected if key in freq) < n:
            return None
        victims: list[Key] = []
        skipped: dict[int, list[Key]] = {0: [], 1: []}  # protected keys, per queue
        while len(victims) < n:
            from_small = bool(self.small) and (
                len(self.small) >= self.small_capacity or not self.main
            )
            queue = self.small if from_small else self.main
            key, _ = queue.popitem(last=False)
            if key in protected:
                skipped[int(from_small)].append(key)
            elif freq[key] and from_small:
                freq[key] = 0
                self.main[key] = None
            elif freq[key]:
                freq[key] -= 1
                self.main[key] = None
            else:
                victims.append(key)
                del freq[key]
                if from_small:
                    self.ghost[key] = None
                    if len(self.ghost) > self.capacity:
                        self.ghost.popitem(last=False)
        for index, queue in ((1, self.small), (0, self.main)):
            for key in reversed(skipped[index]):
                queue[key] = None
                queue.move_to_end(key, last=False)
        return victims


class StickyPolicy(CachePolicy):
    """atom-tier's sticky policy: the very code vLLM runs (:class:`StickyCore`)."""

    name = "sticky"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.core: StickyCore[Key] = StickyCore(capacity)

    def __contains__(self, key: Key) -> bool:
        return key in self.core

    def __len__(self) -> int:
        return len(self.core)

    def insert(self, key: Key) -> None:
        self.core.insert(key)

    def evict(self, n: int, protected: Collection[Key]) -> list[Key] | None:
        return self.core.evict(n, protected)

    def touch(self, keys: Sequence[Key]) -> None:
        self.core.request_finished(keys, set(keys))

    def on_store_miss(self, keys: Sequence[Key]) -> None:
        self.core.store_miss(keys)

    def on_request_finished(
        self, keys: Sequence[Key], insertion_only: Collection[Key], reused: Collection[Key]
    ) -> None:
        self.core.request_finished(keys, reused)


PolicyFactory = Callable[[int], CachePolicy]
# The policies ATOM_TIER_EVICTION can select (the planner's --eviction accepts these).
POLICIES: dict[str, PolicyFactory] = {"lru": LruPolicy, "arc": ArcPolicy, "sticky": StickyPolicy}
# Simulated for the study only: no vLLM policy runs them.
STUDY_POLICIES: dict[str, PolicyFactory] = {**POLICIES, "s3fifo": S3FifoPolicy}


def make_policy(name: str, capacity: int) -> CachePolicy:
    """The policy ``name`` (one of :data:`STUDY_POLICIES`) holding ``capacity`` chunks."""
    try:
        factory = STUDY_POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown cache policy {name!r}: expected one of {', '.join(sorted(STUDY_POLICIES))}"
        ) from None
    return factory(capacity)
